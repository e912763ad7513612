"""The web page end to end: Debian's chromium driven by Playwright against a real uvicorn on 127.0.0.1.

Upload a Shapes World image, see a caption, hover words and see the heatmap change, ask a question
(or see the clear "no model" message), upload a non-image and see the error. Nothing leaves the
machine: the server binds loopback and the page may only fetch from it.

POLYMODAL_TEST_MODELS (model dirs separated by os.pathsep, e.g. a trained captioner and a VQA model)
and POLYMODAL_TEST_INDEX (a retrieval index) replace the tiny untrained models. The page of the bundled
models (and the README screenshot) is tests/test_browser_bundled.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from playwright import sync_api

from tests.conftest import tiny_model
from tests.test_serve import tiny_retrieval

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: the browser test needs Debian's chromium (`make chromium` or "
                f"`apt-get install -y chromium`); playwright-downloaded browsers are not used", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(folder: Path) -> tuple[dict | list[str], Path | None]:
    """The models to serve, and a retrieval index: tiny ones made here unless POLYMODAL_TEST_MODELS is set."""
    dirs = [d for d in os.environ.get("POLYMODAL_TEST_MODELS", "").split(os.pathsep) if d]
    if dirs:
        return dirs, Path(os.environ["POLYMODAL_TEST_INDEX"]) if os.environ.get("POLYMODAL_TEST_INDEX") else None
    model = tiny_model()
    with torch.no_grad():  # sharpen the untrained attention so that each word looks somewhere else
        model.decoder.attention.score.weight.mul_(60.0)
    model.ood_stats = _scene_stats(model)
    encoder, index = tiny_retrieval(folder)
    from polymodal.api import load
    from polymodal.assets import BUNDLED_VQA, bundled_model_dir
    from tests.test_cli_matrix import _text_to_image

    vqa = load(bundled_model_dir(BUNDLED_VQA)).eval()  # trained: its "why?" rests on the question's words
    return {"tiny-captioner": model, "tiny-dual-encoder": encoder, "tiny-drawer": _text_to_image().eval(),
            "vqa": vqa}, index


def _noise_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path)
    return path


def _scene_stats(model: torch.nn.Module) -> object:
    """OOD statistics of the untrained captioner on Shapes World scenes, with the threshold between the page's
    scene and its noise image: what a trained model's statistics do, made certain for this test."""
    from polymodal.data.shapes import render, sample_scene
    from polymodal.eval.ood import FeatureStats, pooled_image_features

    scenes = [render(sample_scene(random.Random(100 + i), min_objects=1, max_objects=4), size=128) for i in range(60)]
    features = pooled_image_features(model, scenes)
    stats = FeatureStats.fit(features[:40], features[40:])
    scene = render(sample_scene(random.Random(3), min_objects=2, max_objects=3), size=128)
    with tempfile.TemporaryDirectory() as tmp:
        scene_score, noise_score = stats.score(pooled_image_features(model, [scene, _noise_png(Path(tmp) / "n.png")]))
    assert noise_score > scene_score
    stats.threshold = float(scene_score + noise_score) / 2
    return stats


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list]]:
    from polymodal.serve import create_app

    models, index = _models(tmp_path_factory.mktemp("served"))
    app = create_app(models, index=index)
    tasks = sorted({t for e in app.state.service.models.entries.values() for t in e.tasks})
    with serving(app) as base:
        yield base, tasks


@contextlib.contextmanager
def serving(app: object) -> Iterator[str]:
    """A real uvicorn serving `app` on a free 127.0.0.1 port in a thread; yields its base URL."""
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{srv.config.port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def shapes_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polymodal.data.shapes import render, sample_scene

    path = tmp_path_factory.mktemp("page") / "scene.png"
    render(sample_scene(random.Random(3), min_objects=2, max_objects=3), size=128).save(path)
    return path


def test_page_caption_heatmaps_and_questions(server: tuple[str, list], shapes_png: Path, tmp_path: Path) -> None:
    base, tasks = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            outside = loopback_only(page, base)
            page.goto(base + "/")
            page.wait_for_selector("#models .model")

            # Upload -> a caption whose words carry heatmaps.
            page.set_input_files("#file", str(shapes_png))
            page.wait_for_selector("#caption .word", timeout=30_000)
            words = page.locator("#caption .word")
            assert words.count() >= 2
            caption = page.inner_text("#caption").strip()
            assert caption and "No caption" not in caption and page.is_hidden("#ood-notice")
            # Each object the caption names has a numbered marker on the image, numbered as in the caption.
            marks = page.locator("#marks .mark")
            assert 0 < marks.count() == page.locator("#caption sup.obj").count()
            assert [marks.nth(k).inner_text() for k in range(marks.count())] == [
                str(k + 1) for k in range(marks.count())]

            # Hover word 0, then word 1: the overlay is shown, labelled, and changes.
            words.nth(0).hover()
            page.wait_for_selector("#heat.on")
            first = page.get_attribute("#heat", "src")
            assert page.inner_text("#focus") == words.nth(0).inner_text()
            words.nth(1).hover()
            page.wait_for_function("src => document.getElementById('heat').src !== src", arg=first)
            second = page.get_attribute("#heat", "src")
            assert first and second and first.startswith("data:image/png;base64,") and first != second
            page.mouse.move(5, 5)
            page.wait_for_selector("#heat:not(.on)", state="attached")

            # Questions: answered by a VQA/chat model, or a clear "no model for this" message.
            if "vqa" in tasks or "chat" in tasks:
                page.fill("#question", "what colour is the largest shape?")
                page.press("#question", "Enter")
                page.wait_for_selector(".bubble.assistant:not(.typing)", timeout=30_000)
                assert page.inner_text(".bubble.assistant").strip()
                if "chat" not in tasks:  # a VQA answer explains itself: "why?" over the image, and its words
                    page.click(".bubble.assistant .why")
                    page.wait_for_selector(".bubble.assistant .why-words", timeout=30_000)
                    assert '"colour"' in page.inner_text(".bubble.assistant .why-words")
                    assert page.get_attribute("#heat", "src").startswith("data:image/png;base64,")
            else:
                note = page.inner_text("#ask-note")
                assert "No question-answering model is loaded" in note and "polymodal serve" in note
                assert page.is_disabled("#question")

            # Search the index (when there is one): thumbnails; clicking one captions it.
            searching = "retrieve" in tasks and page.is_visible("#search-card")
            if searching:
                page.fill("#query", "a large red circle")
                page.press("#query", "Enter")
                page.wait_for_selector("#results figure img")
                assert 0 < page.locator("#results figure").count() <= 12
                page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete)")

            if searching:
                recaption(page, page.locator("#results figure").first.click)
                assert page.locator("#caption .word").count() >= 2

            # Draw: a prompt gives drawings; clicking one makes it the image the page captions.
            if "generate" in tasks:
                page.fill("#prompt", "a red circle")
                page.press("#prompt", "Enter")
                page.wait_for_selector("#drawings figure img", timeout=30_000)
                assert page.locator("#drawings figure").count() == 4
                assert not page.is_visible("#draw-where")  # a generator not trained with layout boxes
                recaption(page, page.locator("#drawings figure").first.click)
                assert page.locator("#caption .word").count() >= 2

            # An image unlike the training data: a notice says the caption is a guess (OOD statistics).
            if "tiny-captioner" in page.inner_text("#models"):
                recaption(page, lambda: page.set_input_files("#file", str(_noise_png(tmp_path / "noise.png"))))
                page.wait_for_selector("#ood-notice", state="visible")
                assert "unlike anything the model was trained on" in page.inner_text("#ood-notice")

            # A zip named .png: the page shows the server's clear message, and keeps working.
            fake = tmp_path / "holiday.png"
            fake.write_bytes(b"PK\x03\x04" + bytes(200))
            page.set_input_files("#file", str(fake))
            page.wait_for_selector("#toast.on")
            assert "not an image (a ZIP archive)" in page.inner_text("#toast")
            page.set_input_files("#file", str(shapes_png))
            page.wait_for_selector("#caption .word", timeout=30_000)
            page.wait_for_selector("#ood-notice", state="hidden")
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            browser.close()
    assert not outside, f"the page tried to reach beyond the server: {outside}"


@contextlib.contextmanager
def chromium_page(extra_args: tuple[str, ...] = ()) -> Iterator[tuple[sync_api.Page, list[str]]]:
    """A page of the system's headless Chromium, and the list its JavaScript errors are appended to."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            yield page, errors
        finally:
            browser.close()


def recaption(page: sync_api.Page, action: Callable[[], object], timeout: int = 30_000) -> None:
    """Do `action` and wait until the page has captioned again (its `data-captions` counter moved on)."""
    done = page.evaluate("document.body.dataset.captions")
    action()
    page.wait_for_function("n => document.body.dataset.captions !== n", arg=done, timeout=timeout)


def caption_requests(page: sync_api.Page) -> list[str]:
    """The list that collects the form body of every /v1/caption request the page sends, in order."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/v1/caption") else None)
    return sent


def loopback_only(page: object, base: str) -> list[str]:
    """Let `page` fetch only from the server at `base` (and data:/blob: URLs); returns the list that collects every
    other URL it tried (aborted), for the test to assert empty at the end."""
    outside: list[str] = []

    def route(request_route: object) -> None:
        url = request_route.request.url  # type: ignore[attr-defined]
        if url.startswith((base, "data:", "blob:")):
            request_route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            request_route.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)  # type: ignore[attr-defined]
    return outside
