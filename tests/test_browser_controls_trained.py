"""The page's trained controls in chromium: the length slider and click-on-the-image-to-focus appear only for a
captioner trained with them, and send `length` / `focus_point`; the Draw card's "where" list only for a generator
trained with layout boxes, and sends `box` (docs/control.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CAPTIONS
from tests.test_browser import caption_requests, chromium_page, loopback_only, recaption, serving


def _controlled_model():
    """An untrained prefix LM that says it was trained with every control: the page only reads what it can take."""
    import torch

    from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
    from polymodal.data.controlled_captions import with_control_tokens
    from polymodal.models.prefix_lm import PrefixConfig, PrefixLM
    from polymodal.text.tokenizer import WordTokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, dropout=0.0, max_len=8))
    prefix = PrefixConfig(pixel_shuffle=2, controls=["length", "form", "focus"])
    return PrefixLM(cfg, with_control_tokens(WordTokenizer.build(CAPTIONS)), prefix).eval()


def _layout_generator():
    """An untrained token image generator that says it was trained with layout boxes."""
    import torch

    from polymodal.data.layout import layout_tokens
    from polymodal.models.image_tokenizer import ImageTokenizerConfig
    from polymodal.models.token_image_generator import TokenImageConfig, TokenImageGenerator
    from polymodal.text.tokenizer import WordTokenizer

    torch.manual_seed(0)
    words = WordTokenizer.build(CAPTIONS).words
    cfg = TokenImageConfig(image=ImageTokenizerConfig(image_size=16, patch=2, channels=(8, 8), levels=(3, 3)),
                           width=32, layers=1, heads=2, text_max_len=16, layout_grid=8,
                           outside_box_codes=[[0, 1, 2]])  # as if fitted: a strict box can be asked for
    return TokenImageGenerator(cfg, WordTokenizer([*words, *layout_tokens()])).eval()


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    from polymodal.serve import create_app

    with serving(create_app({"controlled": _controlled_model(), "boxed": _layout_generator()})) as url:
        yield url


def test_draw_inside_a_box(base: str) -> None:
    with chromium_page() as (page, errors):
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/v1/generate") else None)
        outside = loopback_only(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#models .model")
        assert page.is_visible("#draw-where")
        page.select_option("#draw-where", label="left half")
        page.fill("#prompt", "a red circle")
        page.press("#prompt", "Enter")
        page.wait_for_selector("#drawings figure img", timeout=30_000)
        assert '"box":[0,0,0.5,1]' in sent[-1].replace(" ", "") and "strict_box" not in sent[-1]
        assert page.is_visible("#draw-strict-label")
        page.check("#draw-strict")
        with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as strict:
            page.press("#prompt", "Enter")
        assert '"strict_box":true' in sent[-1].replace(" ", "") and strict.value.ok
        page.select_option("#draw-where", label="anywhere")
        with page.expect_response(lambda r: r.url.endswith("/v1/generate")):
            page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelectorAll('#drawings figure img').length === 4", timeout=30_000)
        assert len(sent) == 3
        assert '"box"' not in sent[-1] and "strict_box" not in sent[-1]  # no box: nothing strict either
        assert not errors and not outside


def test_length_slider_and_click_to_focus(base: str, scene_png: Path) -> None:
    with chromium_page() as (page, errors):
        sent = caption_requests(page)
        outside = loopback_only(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#models .model")
        assert page.is_visible("#length-field") and page.is_enabled("#length") and page.is_visible("#focus-hint")
        page.set_input_files("#file", str(scene_png))
        page.wait_for_function("document.body.dataset.captions === '1'", timeout=30_000)
        assert 'name="length"' not in sent[-1] and 'name="focus_point"' not in sent[-1]  # normal: as without

        recaption(page, lambda: page.eval_on_selector(
            "#length", "el => { el.value = 0; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }"))
        assert 'name="length"' in sent[-1] and "short" in sent[-1] and page.inner_text("#length-out") == "short"

        box = page.locator("#base").bounding_box()
        recaption(page, lambda: page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75))
        sent_point = sent[-1].split('name="focus_point"')[1].split()[0]  # the click, in [0, 1] of the image
        assert [abs(float(v) - want) < 0.01 for v, want in zip(sent_point.split(","), (0.25, 0.75), strict=True)] == [True, True]
        assert 'name="length"' not in sent[-1]  # one control at a time: the focus wins
        assert page.is_visible("#focus-clear")
        recaption(page, lambda: page.click("#focus-clear"))
        assert 'name="focus_point"' not in sent[-1]
        assert not errors and not outside
