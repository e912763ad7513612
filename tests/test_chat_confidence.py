"""Calibrated confidence of chat replies and "not sure" below the threshold (issue 22): the confidence is the
reply's probability, temperature-scaled; the calibration round-trips through config.json; old saves still chat;
the API, the CLI and the page show it. Tiny untrained models built here; servers bind 127.0.0.1 only."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import polymodal
from polymodal.errors import CheckpointError
from polymodal.eval.calibration import choose_threshold, ece, fit_confidence_temperature
from polymodal.models.reply_confidence import NOT_SURE, ReplyCalibration, ReplyScores, score_replies
from polymodal.serve import create_app
from tests.test_cli_matrix import _assistant, _chat

QUESTIONS = ["what colour is the circle?", "what shape is the red one?", "is the circle blue?", "what is the shape?"]


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(params=["assistant", "chat"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return (_assistant() if request.param == "assistant" else _chat()).eval()


@pytest.fixture
def image() -> Image.Image:
    import random

    from polymodal.data.shapes import render, sample_scene

    return render(sample_scene(random.Random(3), min_objects=2, max_objects=3), size=64)


def test_score_replies_is_the_product_of_the_chosen_tokens_probabilities():
    """Against a hand-made decoder whose logits depend on the position only: the reply's confidence is the
    product of softmax(logits / T) at each chosen token, <eos> included, and the start token is never scored."""
    table = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 1.5, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])  # (position, V)

    def step(tokens, state):
        t = int(state["t"][0])
        return table[t].expand(len(tokens), -1).clone(), {"t": state["t"] + 1}, None

    eos, start = 2, 3
    scores = score_replies(step, {"t": torch.zeros(2, dtype=torch.long)}, start, eos, [[0, 1], [1]])
    for temperature in (1.0, 0.5, 2.0):
        p = [(table[k] / temperature).index_fill(0, torch.tensor([start]), -math.inf).softmax(-1) for k in range(3)]
        expected = [float(p[0][0] * p[1][1] * p[2][eos]), float(p[0][1] * p[1][eos])]
        assert scores.confidence(temperature).tolist() == pytest.approx(expected, rel=1e-6)
        assert scores.confidence(temperature, "first").tolist() == pytest.approx([float(p[0][0]), float(p[0][1])])


def test_confidence_in_unit_interval_and_thresholds(model, image):
    for question in QUESTIONS:
        plain = model.chat_reply(image, _ask(question))
        assert 0.0 <= plain.confidence <= 1.0 and plain.not_sure is None and plain.text == plain.guess
        assert model.chat(image, _ask(question)) == plain.text  # chat() is still the string
    model.calibration = ReplyCalibration(temperature=0.7, threshold=0.0)
    never = [model.chat_reply(image, _ask(q)) for q in QUESTIONS]
    assert [r.not_sure for r in never] == [False] * len(QUESTIONS) and all(r.text == r.guess for r in never)
    model.calibration = ReplyCalibration(temperature=0.7, threshold=1.0)
    always = [model.chat_reply(image, _ask(q)) for q in QUESTIONS]
    assert [r.not_sure for r in always] == [True] * len(QUESTIONS)
    assert all(r.text == NOT_SURE + r.guess for r in always)  # the guess stays visible
    assert [r.confidence for r in always] == [r.confidence for r in never]  # the threshold changes only the words
    assert model.chat(image, _ask(QUESTIONS[0])).startswith("I am not sure; my best guess is: ")


def test_temperature_changes_confidence_not_reply(model, image):
    replies = {}
    for t in (0.5, 1.0, 3.0):
        model.calibration = ReplyCalibration(temperature=t)
        replies[t] = model.chat_reply(image, _ask(QUESTIONS[0]))
    assert len({r.guess for r in replies.values()}) == 1
    assert replies[3.0].confidence < replies[1.0].confidence < replies[0.5].confidence  # greedy tokens: T < 1 sharpens


def test_calibration_round_trips_through_save_and_load(model, image, tmp_path):
    model.calibration = ReplyCalibration(temperature=1.7, threshold=0.42)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["calibration"] == {"temperature": 1.7, "threshold": 0.42, "method": "sequence"}
    loaded = polymodal.load(tmp_path / "m")
    assert loaded.calibration == model.calibration
    assert loaded.chat_reply(image, _ask(QUESTIONS[1])) == model.chat_reply(image, _ask(QUESTIONS[1]))


def test_model_saved_without_calibration_loads_and_chats(model, image, tmp_path):
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "calibration" not in config  # exactly what a save before this change wrote
    loaded = polymodal.load(tmp_path / "old")
    assert loaded.calibration is None
    reply = loaded.chat_reply(image, _ask(QUESTIONS[0]))
    assert reply.not_sure is None and reply.text == loaded.chat(image, _ask(QUESTIONS[0])) == reply.guess
    assert 0.0 <= reply.confidence <= 1.0  # uncalibrated (T = 1), never "not sure"


@pytest.mark.parametrize("section, message", [({"temperature": -1.0}, "positive number"),
                                              ({"threshold": 1.5}, "[0, 1]"),
                                              ({"temprature": 2.0}, "did you mean 'temperature'"),
                                              ("hot", "must be a mapping")])
def test_bad_calibration_section_names_the_file(tmp_path, section, message):
    _assistant().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "calibration": section}))
    with pytest.raises(CheckpointError, match="config.json") as err:
        polymodal.load(tmp_path / "m")
    assert message in str(err.value)


def test_previous_reply_with_not_sure_words_is_read_as_its_guess(model, image):
    """The page and API clients send the conversation back as shown: the not-sure words are not the model's."""
    model.calibration = ReplyCalibration(threshold=1.0)
    first = model.chat_reply(image, _ask(QUESTIONS[0]))
    follow = [*_ask(QUESTIONS[0]), {"role": "assistant", "content": first.text}, *_ask(QUESTIONS[1])]
    plain = [*_ask(QUESTIONS[0]), {"role": "assistant", "content": first.guess}, *_ask(QUESTIONS[1])]
    assert model.chat_reply(image, follow) == model.chat_reply(image, plain)


def test_fitted_temperature_calibrates_overconfident_replies():
    """Replies whose right/wrong follows their probability at T = 2 while the logits are twice as sharp: the fit
    finds T ~ 2, ECE falls, and the threshold sits where replies become right half the time."""
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 3000, 3, 6
    logits = 4.0 * torch.randn(n * length, vocab, generator=g)
    chosen = logits.argmax(-1)  # greedy replies
    scores = ReplyScores(logits, chosen, torch.arange(n).repeat_interleave(length),
                         (torch.arange(n * length) % length) == 0, n)
    correct = torch.bernoulli(scores.confidence(2.0), generator=g)
    t = fit_confidence_temperature(lambda t: scores.confidence(t), correct)
    assert 1.8 < t < 2.2
    assert ece(scores.confidence(t), correct) < 0.03 < ece(scores.confidence(1.0), correct)
    assert 0.35 < choose_threshold(scores.confidence(t), correct) < 0.65


def test_api_returns_confidence_and_not_sure(image):
    torch.manual_seed(0)
    calibrated, old = _assistant().eval(), _assistant().eval()
    calibrated.calibration = ReplyCalibration(temperature=1.3, threshold=1.0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    files = {"image": ("a.png", buf.getvalue(), "image/png")}
    with TestClient(create_app({"sure": calibrated, "old": old})) as c:
        r = c.post("/v1/chat", files=files, data={"model": "sure", "messages": json.dumps(_ask(QUESTIONS[0]))})
        body = r.json()
        assert r.status_code == 200 and 0.0 <= body["confidence"] <= 1.0 and body["not_sure"] is True
        assert body["message"]["content"].startswith(NOT_SURE)
        r = c.post("/v1/chat", files=files, data={"model": "old", "messages": json.dumps(_ask(QUESTIONS[0]))})
        assert 0.0 <= r.json()["confidence"] <= 1.0 and r.json()["not_sure"] is None
        with c.stream("POST", "/v1/chat", files=files, data={"model": "sure", "stream": "true",
                                                             "messages": json.dumps(_ask(QUESTIONS[0]))}) as s:
            done = [line for line in s.iter_lines() if line.startswith("data: ") and "elapsed_ms" in line]
        assert json.loads(done[0][6:])["not_sure"] is True
        schema = c.get("/openapi.json").json()["components"]["schemas"]["ChatResponse"]["properties"]
        assert "calibrated" in schema["confidence"]["description"] and schema["not_sure"]["description"]


def test_cli_chat_prints_confidence_on_stderr(image, tmp_path, monkeypatch, capsys):
    from polymodal.cli import main

    model = _assistant()
    model.calibration = ReplyCalibration(threshold=1.0)
    model.save_pretrained(tmp_path / "m")
    image.save(tmp_path / "scene.png")
    monkeypatch.setattr(sys, "argv", ["polymodal", "chat", str(tmp_path / "m"), str(tmp_path / "scene.png")])
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTIONS[0]}\n{QUESTIONS[1]}\n"))
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None)
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert [line.startswith(f"assistant: {NOT_SURE}") for line in out] == [True, True]
    sure = [line for line in err if line.startswith("confidence: p=")]
    assert len(sure) == 2 and all(line.endswith("(not sure)") for line in sure)


def test_page_shows_not_sure_and_unlike_notice_for_chat(image, tmp_path):
    """The chat panel: a reply about an image unlike the training data gets the notice the caption panel shows,
    and a reply below the threshold is marked "not sure" with its confidence."""
    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("needs Debian's chromium (/usr/bin/chromium)")

    from polymodal.eval.ood import FeatureStats, pooled_image_features
    from tests.test_browser import chromium_page, loopback_only, serving

    torch.manual_seed(0)
    model = _assistant().eval()
    model.calibration = ReplyCalibration(threshold=1.0)
    features = pooled_image_features(model, [image] * 4)
    model.ood_stats = FeatureStats.fit(features + 0.01 * torch.randn_like(features), features)
    model.ood_stats.threshold = -1.0  # every image is "unlike": the notice must show
    image.save(tmp_path / "scene.png")
    with serving(create_app({"tiny-assistant": model})) as base, chromium_page() as (page, errors):
        outside = loopback_only(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#models .model")
        page.set_input_files("#file", str(tmp_path / "scene.png"))
        page.fill("#question", QUESTIONS[0])
        page.press("#question", "Enter")
        page.wait_for_selector(".bubble.assistant:not(.typing) .confidence", timeout=30_000)
        assert "unlike anything the model was trained on" in page.inner_text("#chat .ood-notice")
        assert page.locator(".bubble.assistant.not-sure").count() == 1
        assert page.inner_text(".bubble.assistant .confidence").startswith("not sure · ")
        assert page.inner_text(".bubble.assistant").startswith("I am not sure; my best guess is:")
        assert not errors, errors
    assert not outside, outside


def test_save_calibration_sets_only_that_section(tmp_path):
    """Calibrating an existing checkpoint (train.assistant.save_calibration, used by calibrate_assistant) changes
    only config.json's "calibration"; the weights file is untouched."""
    from polymodal.train.assistant import save_calibration

    model = _assistant()
    model.save_pretrained(tmp_path / "m")
    before = json.loads((tmp_path / "m" / "config.json").read_text())
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    model.calibration = ReplyCalibration(temperature=0.9, threshold=0.5)
    save_calibration(model, tmp_path / "m")
    after = json.loads((tmp_path / "m" / "config.json").read_text())
    assert after == {**before, "calibration": {"temperature": 0.9, "threshold": 0.5, "method": "sequence"}}
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    assert polymodal.load(tmp_path / "m").calibration == model.calibration
