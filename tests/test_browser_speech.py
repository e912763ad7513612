"""The page's microphone end to end: chromium's fake audio capture plays a question synthesized by espeak-ng,
the page records it (MediaRecorder), sends it to /v1/vqa, shows the transcript and the answer, and plays the
spoken answer (/v1/speak). Served: the bundled VQA model and speech recognizer, on 127.0.0.1 only.

The microphone stays hidden when no recognizer is loaded (GET /v1/models says which tasks are served).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from polymodal.data.speech import espeak_available

from .test_browser import (  # skips this module too without chromium
    chromium_page,
    loopback_only,
    serving,
)

QUESTION = "what colour is the circle"
if not espeak_available():
    pytest.skip("espeak-ng not installed (`apt-get install espeak-ng` or `make speech`): no spoken question to "
                "play into the fake microphone", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    import polymodal
    from polymodal.assets import ASSETS, BUNDLED_ASR, BUNDLED_VQA
    from polymodal.serve import create_app

    app = create_app({name: polymodal.load(ASSETS / name).eval() for name in (BUNDLED_VQA, BUNDLED_ASR)})
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QUESTION spoken by espeak-ng, 0.3 s of silence before and 3 s after (the recording may run on), 16 kHz."""
    from polymodal.data.audio import write_wav
    from polymodal.data.speech import Voicing, synthesize

    speech = synthesize(QUESTION, Voicing("en-us+m1", speed=160))
    padded = np.concatenate([np.zeros(4800, np.float32), speech, np.zeros(48000, np.float32)])
    return write_wav(tmp_path_factory.mktemp("mic") / "question.wav", padded, 16000)


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polymodal.data.shapes import Scene, ShapeObject, render

    path = tmp_path_factory.mktemp("page") / "scene.png"
    render(Scene((ShapeObject("circle", "red", "large", 0.4, 0.5),), background=(40, 40, 40)), 128).save(path)
    return path


def test_spoken_question_transcript_answer_and_spoken_reply(server: str, question_wav: Path, scene_png: Path) -> None:
    args = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={question_wav}%noloop", "--autoplay-policy=no-user-gesture-required")
    with chromium_page(args) as (page, errors):
        outside = loopback_only(page, server)
        page.goto(server + "/")
        page.wait_for_selector("#mic", state="visible")
        page.set_input_files("#file", str(scene_png))

        page.click("#mic")  # start: the fake microphone plays the question from its start
        page.wait_for_selector("#mic.recording")
        page.wait_for_timeout(3000)  # 0.3 s silence + ~1.6 s of speech, then silence
        page.click("#mic")  # stop: the recording goes to /v1/vqa
        page.wait_for_function("document.body.dataset.spoken === '1'", timeout=30_000)

        reply = page.locator(".bubble.assistant").last
        assert "error" not in (reply.get_attribute("class") or ""), reply.inner_text()
        heard = page.inner_text("#heard")
        assert QUESTION in heard and page.inner_text(".bubble.user").strip() == QUESTION  # the transcript
        assert reply.inner_text().split()[0] == "red"  # the answer to it, about this image
        page.wait_for_selector("#reply-audio", state="visible")
        assert page.get_attribute("#reply-audio", "src").startswith("blob:")
        assert not page.inner_text("#ask-note").startswith("Spoken answers are off")

        # Without a speech recognizer (as GET /v1/models would say), there is no microphone.
        page.route("**/v1/models", lambda route: route.fulfill(
            status=200, content_type="application/json",
            body=json.dumps(_without_recognizer(route.fetch().json()))))
        page.reload()
        page.wait_for_selector("#models .model")
        assert page.is_hidden("#mic") and page.is_disabled("#mic")
        assert not errors, f"JavaScript errors: {errors}"
    assert not outside, f"the page tried to reach beyond the server: {outside}"


def _without_recognizer(info: dict) -> dict:
    return {**info, "models": [m for m in info["models"] if "transcribe" not in m["tasks"]]}
