"""The page's caption controls end to end (Debian's chromium via Playwright, a real uvicorn on 127.0.0.1):
"without colours" and "must mention" reach /v1/caption as omit_words / force_words and the captions obey;
a word the model does not know gives the server's one-line message. The rest of the page: tests/test_browser.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright import sync_api

from polymodal.data.shapes import COLOURS
from polymodal.eval.hallucination import words
from tests.conftest import tiny_model
from tests.test_browser import caption_requests, chromium_page, loopback_only, recaption, serving


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    from polymodal.serve import create_app

    with serving(create_app({"tiny-captioner": tiny_model(seed=2)})) as url:
        yield url


def _captions(page: sync_api.Page) -> list[list[str]]:
    """The best caption's words and each n-best caption's words, as the page shows them."""
    best = [page.locator("#caption .word").nth(i).inner_text() for i in range(page.locator("#caption .word").count())]
    texts = page.locator("#nbest-list .text")
    return [best or words(page.inner_text("#caption"))] + [words(texts.nth(i).inner_text())
                                                            for i in range(texts.count())]


def test_page_without_colours_and_must_mention(base: str, scene_png: Path) -> None:
    with chromium_page() as (page, errors):
        sent = caption_requests(page)
        outside = loopback_only(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#models .model")
        page.set_input_files("#file", str(scene_png))
        page.wait_for_selector("#caption .word", timeout=30_000)
        assert "omit_words" not in sent[-1] and "force_words" not in sent[-1]

        # "without colours": the request omits the colour group; no caption of the n-best names a colour.
        recaption(page, lambda: page.check("#no-colours"))
        assert 'name="omit_words"' in sent[-1] and "colours" in sent[-1]
        captions = _captions(page)
        assert captions[0] and all(not set(c) & set(COLOURS) for c in captions), captions

        # "must mention": every caption says the words, and still no colour.
        recaption(page, lambda: (page.fill("#must-mention", "star, square"), page.press("#must-mention", "Enter")))
        assert 'name="force_words"' in sent[-1] and "star,square" in sent[-1]
        captions = _captions(page)
        assert all({"star", "square"} <= set(c) and not set(c) & set(COLOURS) for c in captions), captions

        # A word the model does not know: the server's one-line message, on the page.
        recaption(page, lambda: (page.fill("#must-mention", "zebra"), page.press("#must-mention", "Enter")))
        page.wait_for_selector("#toast.on")
        assert "does not know the word 'zebra'" in page.inner_text("#toast")
        assert "No caption" in page.inner_text("#caption")

        # Cleared controls: a plain caption again.
        recaption(page, lambda: (page.fill("#must-mention", ""), page.press("#must-mention", "Enter")))
        recaption(page, lambda: page.uncheck("#no-colours"))
        assert "omit_words" not in sent[-1] and "force_words" not in sent[-1]
        assert page.locator("#caption .word").count() >= 1
        assert not errors, f"JavaScript errors: {errors}"
    assert not outside, f"the page tried to reach beyond the server: {outside}"
