"""Replies that point before they answer (data/grounding.py): position, relation and count replies write the
centres of their objects as location tokens first; the text shown, the API and the CLI give them as points; an
earlier reply is context without them (as a user sends it back) and carries no loss."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.data.chat_template import prompt, render
from polymodal.data.dialogue import (
    ASSISTANT,
    USER,
    DialogueRecord,
    Turn,
    build_chat_tokenizer,
    dialogues_for_scene,
)
from polymodal.data.grounding import location_grid, location_ids, location_words, split_locations
from polymodal.data.instructions import INSTRUCTION_KINDS, InstructionConfig, InstructionDataset
from polymodal.data.shapes import Scene, ShapeObject
from polymodal.data.shapes_text import left_to_right, noun, region
from polymodal.errors import ConfigError
from polymodal.eval.assistant import Query, kind_report
from polymodal.models.assistant import AssistantConfig, InstructionAssistant
from polymodal.models.prefix_lm import PrefixConfig
from polymodal.serve import create_app
from polymodal.text.tokenizer import SPECIALS, WordTokenizer
from tests.test_cli_matrix import WORDS

SCENE = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "large", 0.7, 0.2),
               ShapeObject("star", "green", "large", 0.55, 0.85)), (40, 40, 40))


def _tokenizer(convs: list[DialogueRecord], grid: int = 12) -> WordTokenizer:
    return build_chat_tokenizer(convs, location_grid=grid)


def _turns(kind: str, n: int = 40) -> list[Turn]:
    rng = random.Random(0)
    return [t for t in (INSTRUCTION_KINDS[kind](SCENE, ["a red circle"], rng, InstructionConfig()) for _ in range(n)) if t]


def test_position_and_count_turns_carry_the_centres_of_their_objects():
    by_shape = []
    for turn in _turns("position"):
        named = [o for o in SCENE.objects if f"{o.colour} {o.shape}" in turn.question]
        named.sort(key=lambda o: turn.question.index(f"{o.colour} {o.shape}"))  # in the order asked
        if not named:  # "where is the circle?": the only circle, asked by its shape alone
            named = [o for o in SCENE.objects if turn.question == f"where is the {o.shape}?"]
            by_shape.append(turn)
        assert turn.points == tuple((o.x, o.y) for o in named)
        if turn.question.startswith("where"):
            assert turn.answer == region(named[0])
    assert by_shape  # so "where is the <shape>?" is not asked only of absent shapes (and declined)
    for turn in _turns("count"):
        assert len(turn.points) == ["zero", "one", "two", "three", "four"].index(turn.answer)
        assert list(turn.points) == sorted(turn.points)  # pointed at left to right
    for turn in _turns("colour") + _turns("absent"):  # nothing to point at: an absent object is declined
        assert turn.points == ()
    dialogues = [t for d in dialogues_for_scene(SCENE, random.Random(1), 3) for t in d]
    for turn in dialogues:
        assert bool(turn.points) == (turn.kind in ("open/position", "follow/where", "follow/relation", "follow/position"))


def test_a_region_request_names_and_points_at_what_is_there_or_says_nothing_is():
    replies = {}
    for turn in _turns("region", 80):
        phrase = turn.question.removeprefix("what is ").removeprefix("what shapes are ").removesuffix("?")
        there = left_to_right([o for o in SCENE.objects if region(o) == phrase])
        assert turn.points == tuple(o.centre for o in there)  # pointed at in reading order
        assert turn.answer == (" and ".join(noun(o) for o in there) if there else f"there is no shape {phrase}")
        replies[bool(there)] = turn.answer
    assert set(replies) == {True, False}  # both an empty and an occupied region are asked about
    # order-free like a list, and a right "there is no shape ..." is no false decline
    q = [Query("a", [], "region", "a small red circle and a large blue square"),
         Query("a", [], "region", "there is no shape on the left")]
    report = kind_report(q, ["a large blue square and a small red circle", "there is no shape on the left"])
    assert report["accuracy/region"] == 1.0 and report["false_decline"] == 0.0


def test_location_tokens_round_trip_and_no_text_can_type_them():
    tok = _tokenizer([DialogueRecord("0", "a.png", [Turn("where is it?", "on the left", "x")])])
    assert location_grid(tok) == 12 and location_grid(_tokenizer([], grid=0)) == 0
    ids = location_ids(tok, [(0.2, 0.5), (1.0, 0.0)])
    assert [tok.words[i] for i in ids] == ["<gx2>", "<gy6>", "<gx11>", "<gy0>"]
    words, points = split_locations(tok, [*ids, *tok.encode("on the left")])
    assert tok.decode(words) == "on the left"
    assert points == [pytest.approx((2.5 / 12, 6.5 / 12)), pytest.approx((11.5 / 12, 0.5 / 12))]
    assert tok.encode("<gx2> <gy6>") == tok.encode("gx2 gy6") and tok.index["<gx2>"] not in tok.encode("<gx2>")
    assert location_words(2) == ["<gx0>", "<gx1>", "<gy0>", "<gy1>"]


def test_only_the_last_reply_points_and_an_earlier_pointing_reply_is_learnt_in_its_own_item():
    where = Turn("where is the red circle?", "on the left", "position", ((0.2, 0.5),))
    colour = Turn("what colour is the square?", "blue", "colour")
    conv = DialogueRecord("0", "a.png", [where, colour])
    tok = _tokenizer([conv])
    ids, loss = render(tok, [where, colour])
    said = [tok.words[i] for i in ids]
    assert "<gx2>" not in said  # the earlier reply as a user sends it back
    assert [tok.words[i] for i, keep in zip(ids, loss, strict=True) if keep] == ["blue", "<eos>"]
    data = InstructionDataset([conv], [0], lambda row: torch.zeros(3, 8, 8, dtype=torch.uint8), tok, 64)
    learnt = [[tok.words[int(i)] for i in item["targets"] if i != tok.pad_id] for item in data]
    assert sorted(learnt) == sorted([["<gx2>", "<gy6>", "on", "the", "left", "<eos>"], ["blue", "<eos>"]])
    messages = [{"role": "user", "content": where.question}, {"role": "assistant", "content": where.answer},
                {"role": "user", "content": colour.question}]
    whole = max(data, key=lambda item: len(item["tokens"]))
    asked = prompt(tok, messages, budget=64).ids
    assert whole["tokens"][: len(asked)].tolist() == asked  # the context is what inference will be asked with
    plain = build_chat_tokenizer([conv])  # no location tokens: replies in words, every reply learnt
    assert sum(render(plain, [where, colour])[1]) == len(plain.encode("on the left blue")) + 2


def _pointing_assistant() -> InstructionAssistant:
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, dropout=0.0, max_positions=32))
    tok = WordTokenizer([*SPECIALS, USER, ASSISTANT, *sorted({*WORDS, "on", "the", "left"}), *location_words(12)])
    return InstructionAssistant(cfg, tok, assistant=AssistantConfig(max_reply_len=8)).eval()


def test_a_written_point_looks_back_at_its_visual_token_alike_in_training_and_decoding(tmp_path):
    """With the look-back on, the input after a written <gxI> <gyJ> carries the visual token under that point:
    teacher forcing, the KV-cached step and full recomputation see the same, and only from the point on."""
    model = _pointing_assistant()
    images = torch.rand(1, 3, 32, 32)
    tok = model.tokenizer
    question, reply = [tok.index[USER], *tok.encode("where is the circle")], [
        tok.index[ASSISTANT], *location_ids(tok, [(0.8, 0.1)]), *tok.encode("on the left")]
    tokens = torch.tensor([question + reply])
    plain = model({"images": images, "tokens": tokens})[0]
    model.add_look_back()
    assert torch.equal(model({"images": images, "tokens": tokens})[0], plain)  # a zero gate: replies as before
    with torch.no_grad():
        model.look_gate.normal_()
    taught = model({"images": images, "tokens": tokens})[0][0, len(question) - 1:]
    first_y = len(question) + 2  # the <gy> of the point is the third reply token
    differs = (taught - plain[0, len(question) - 1:]).abs().amax(-1) > 1e-6
    assert differs.tolist() == [i >= first_y - len(question) + 1 for i in range(len(differs))]
    for step in (model.step, model.step_uncached):
        state = model.init_state(images, [question], use_cache=step == model.step)
        for i, token in enumerate(reply[:-1]):
            logits, state, _ = step(torch.tensor([token]), state)
            assert torch.allclose(logits[0], taught[i + 1], atol=1e-5), (step.__name__, i)
    again = InstructionAssistant.from_pretrained(model.save_pretrained(tmp_path / "looking"))
    assert again.prefix_cfg.look_back and torch.equal(again.look_gate, model.look_gate)
    unplaced = WordTokenizer([*SPECIALS, USER, ASSISTANT, *WORDS])
    with pytest.raises(ConfigError, match="location tokens"):  # nothing to look back at without points
        InstructionAssistant(model.cfg, unplaced, PrefixConfig(pixel_shuffle=1, look_back=True))


def test_points_are_hidden_from_the_text_and_reach_the_api(monkeypatch):
    model = _pointing_assistant()
    tok = model.tokenizer
    said = [*location_ids(tok, [(0.2, 0.5)]), *tok.encode("on the left")]
    monkeypatch.setattr(model, "reply_ids", lambda images, prompts, cfg=None: [list(said) for _ in prompts])
    image = Image.new("RGB", (32, 32))
    question = [{"role": "user", "content": "where is the circle?"}]
    reply = model.chat_reply(image, question)
    assert reply.text == "on the left" and reply.points == [pytest.approx((2.5 / 12, 6.5 / 12))]
    assert model.answer(image, "where is the circle?") == ["on the left"]
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with TestClient(create_app({"pointing": model})) as c:
        r = c.post("/v1/chat", files={"image": ("a.png", buf.getvalue(), "image/png")},
                   data={"model": "pointing", "messages": json.dumps(question)})
    body = r.json()
    assert r.status_code == 200 and body["message"]["content"] == "on the left"
    assert body["points"] == [pytest.approx([2.5 / 12, 6.5 / 12])]


def test_page_marks_where_a_reply_pointed(monkeypatch, tmp_path):
    """The chat panel puts a numbered marker on the image per point of the reply."""
    from pathlib import Path

    if not Path("/usr/bin/chromium").is_file():
        pytest.skip("needs Debian's chromium (/usr/bin/chromium)")
    from tests.test_browser import chromium_page, loopback_only, serving

    model = _pointing_assistant()
    tok = model.tokenizer
    said = [*location_ids(tok, [(0.2, 0.5), (0.7, 0.2)]), *tok.encode("on the left")]
    monkeypatch.setattr(model, "reply_ids", lambda images, prompts, cfg=None: [list(said) for _ in prompts])
    Image.new("RGB", (64, 64), (40, 40, 40)).save(tmp_path / "scene.png")
    with serving(create_app({"pointing": model})) as base, chromium_page() as (page, errors):
        outside = loopback_only(page, base)
        page.goto(base + "/")
        page.wait_for_selector("#models .model")
        page.set_input_files("#file", str(tmp_path / "scene.png"))
        page.fill("#question", "is the circle left of the square?")
        page.press("#question", "Enter")
        page.wait_for_selector(".bubble.assistant:not(.typing) .pointed", timeout=30_000)
        assert page.inner_text(".bubble.assistant").startswith("on the left")
        marks = page.locator("#marks .mark")
        assert marks.count() == 2 and marks.nth(0).get_attribute("style").startswith("left:20.8%;top:54.2%")
        assert not errors, errors
    assert not outside, outside


def test_an_assistant_is_a_captioner_whose_caption_answers_describe_and_scst_scores_it_there():
    """`caption` is the reply to "describe the image" (no location tokens), and SCST teacher-forces a sample after
    that request with the probabilities decoding had."""
    from polymodal.generate import GenerationConfig
    from polymodal.models.reply_confidence import score_replies
    from polymodal.train.scst import ScstConfig, SelfCritical

    model = _pointing_assistant()
    images = model.preprocess([Image.new("RGB", (32, 32), c) for c in ((200, 0, 0), (0, 0, 200))])
    hyps = model.generate(images, GenerationConfig(strategy="sample", num_return_sequences=3, seed=0))
    assert [len(h) for h in hyps] == [3, 3]
    unsaid = set(model.unsaid_ids)
    assert all(not unsaid & set(h.tokens) for per in hyps for h in per)
    assert {tok for tok in location_ids(model.tokenizer, [(0.5, 0.5)])} <= unsaid
    assert all("<" not in c for c in model.caption([Image.new("RGB", (32, 32))], strategy="greedy"))
    tok = model.tokenizer
    sequences = [tok.encode("red circle"), tok.encode("the square")]
    objective = SelfCritical(model, lambda caps, idx: torch.arange(len(caps), dtype=torch.float32),
                             ScstConfig(baseline="mean", num_samples=2))
    logp, mask = objective.sequence_logprobs(images, sequences)
    state = model.init_state(images, [model.describe_prompt()] * 2)
    expected = score_replies(model.step, state, tok.index[ASSISTANT], tok.eos_id, sequences, model.unsaid_ids)
    assert mask.sum(1).tolist() == [3, 3]  # two words and <eos>
    assert torch.allclose(logp.sum(1).exp().double(), expected.confidence(), atol=1e-5)
    _, terms = objective({"images": images, "record": torch.tensor([0, 1])})
    terms["loss"].backward()
    assert model.lm.wte.weight.grad is not None
