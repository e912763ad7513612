"""What a newcomer gets: `polymodal serve` with no arguments, in chromium, every panel doing its job.

The server is the real command in a subprocess (bundled captioner, VQA model, assistant, speech recognizer, dual
encoder and the index of built-in scenes). On one Shapes World scene whose objects are known, the page
captions it truly, holds a conversation about it (the assistant answers rightly, and points before it says where
"it" is), finds scenes by text and explains a hit; clicking a search result captions that scene. POLYMODAL_SCREENSHOT=1 saves docs/screenshot.png from this page (the
README's screenshot is what a fresh install shows).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from polymodal.assets import SERVED
from polymodal.data.shapes import COLOURS, SHAPES, Scene, ShapeObject, render

from .test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOT, _free_port, loopback_only, recaption

sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (`make chromium`)", allow_module_level=True)

SCENE = Scene((ShapeObject("circle", "red", "large", 0.25, 0.3), ShapeObject("square", "blue", "small", 0.7, 0.7)),
              background=(40, 40, 40))


@pytest.fixture(scope="module")
def bundled_server() -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "polymodal", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)
        else:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"`polymodal serve` did not start: {err[-2000:]}")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "warning" not in proc.stderr.read(), "the bundled server started with a capability off"


def test_every_panel_of_the_no_argument_server(bundled_server: str, tmp_path: Path) -> None:
    base, errors = bundled_server, []
    scene_png = tmp_path / "scene.png"
    render(SCENE, 128).save(scene_png)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.on("pageerror", lambda err: errors.append(str(err)))
            outside = loopback_only(page, base)
            page.goto(base + "/")
            page.wait_for_selector("#models .model")
            listed = page.inner_text("#models")
            assert all(name in listed for name in SERVED if name != "shapes_asr"), listed

            # Caption: true of the scene (its colour and shape words are the scene's).
            page.set_input_files("#file", str(scene_png))
            page.wait_for_selector("#caption .word", timeout=60_000)
            words = page.locator("#caption .word")
            said = [words.nth(i).inner_text() for i in range(words.count())]
            assert {"red", "circle"} <= set(said), said
            assert set(said) & set(COLOURS) <= {"red", "blue"} and set(said) & set(SHAPES) <= {"circle", "square"}
            assert page.is_hidden("#ood-notice")

            # Ask: the bundled assistant answers rightly, and a follow-up about "it" points at the circle first.
            page.fill("#question", "what colour is the circle?")
            page.press("#question", "Enter")
            page.wait_for_selector(".bubble.assistant:not(.typing)", timeout=60_000)
            assert "red" in page.inner_text(".bubble.assistant").lower()
            assert "conversation" in page.inner_text("#ask-meta")
            page.fill("#question", "and where is it?")
            page.press("#question", "Enter")
            page.wait_for_function("document.querySelectorAll('.bubble.assistant:not(.typing)').length == 2")
            follow_up = page.locator(".bubble.assistant").nth(1)
            assert "top left" in follow_up.inner_text() and "pointed at 1 place" in follow_up.inner_text()

            # Search: the bundled index finds scenes; the best ones show a large red circle.
            assert page.is_visible("#search-card")
            page.fill("#query", "a large red circle")
            page.press("#query", "Enter")
            page.wait_for_selector("#results figure img")
            assert 0 < page.locator("#results figure").count() <= 12
            page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")
            if os.environ.get("POLYMODAL_SCREENSHOT") == "1":
                _screenshot(page, words)
            # Why this hit? Its thumbnail turns into the explanation of the match.
            page.locator("#results figure .why").first.click()
            page.wait_for_selector("#results figure.explained img[src^='data:image/png']", timeout=60_000)

            # Clicking a result captions that scene.
            recaption(page, page.locator("#results figure").first.click, timeout=60_000)
            assert "circle" in page.inner_text("#caption")

            # Draw: the bundled generator draws the prompt; a drawing clicked is captioned by the bundled captioner.
            page.fill("#prompt", "a large green star")
            page.press("#prompt", "Enter")
            page.wait_for_selector("#drawings figure img", timeout=60_000)
            assert page.locator("#drawings figure").count() == 4
            recaption(page, page.locator("#drawings figure").first.click, timeout=60_000)
            assert "green" in page.inner_text("#caption")
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            browser.close()
    assert not outside, f"the page tried to reach beyond the server: {outside}"


def _screenshot(page: object, words: object) -> None:
    """Hover the caption's colour word (its heatmap shows) and save docs/screenshot.png."""
    from PIL import Image

    texts = [words.nth(i).inner_text() for i in range(words.count())]  # type: ignore[attr-defined]
    pick = next((i for i, w in enumerate(texts) if w in COLOURS or w in SHAPES), 0)
    words.nth(pick).hover()  # type: ignore[attr-defined]
    page.wait_for_timeout(400)  # type: ignore[attr-defined]  # let the overlay fade in
    png = page.screenshot(full_page=True)  # type: ignore[attr-defined]
    Image.open(io.BytesIO(png)).save(SCREENSHOT, optimize=True)
