"""The assistant: dialogues that need their history, context building, history dependence, round trip, CLI."""

from __future__ import annotations

import io
import random
import sys

import pytest
import torch

from polymodal.config import EncoderConfig
from polymodal.data.dialogue import (
    ASSISTANT,
    USER,
    DialogueRecord,
    Turn,
    build_chat_tokenizer,
    context_ids,
    dialogue_report,
    dialogues_for_scene,
    read_dialogues,
    turn_messages,
)
from polymodal.data.shapes import Scene, ShapeObject, write_shapes_world
from polymodal.errors import InputError
from polymodal.models.chat import Assistant, ChatModelConfig
from polymodal.models.vqa import QuestionEncoderConfig
from polymodal.text.tokenizer import split_words

SCENE = Scene((ShapeObject("circle", "red", "small", 0.15, 0.5), ShapeObject("square", "blue", "large", 0.55, 0.5),
               ShapeObject("star", "green", "large", 0.85, 0.15)), (40, 40, 40))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_follow_ups_refer_to_the_opening_referent():
    by_colour = {o.colour: o for o in SCENE.objects}
    for seed in range(40):
        for turns in dialogues_for_scene(SCENE, random.Random(seed), k=4):
            assert 2 <= len(turns) <= 3 and turns[0].kind.startswith("open/")
            assert all(t.kind.startswith("follow/") for t in turns[1:])
            if turns[0].kind == "open/colour":  # "what colour is the X?" -> the referent is the X
                referent = by_colour[turns[0].answer]
                for t in turns[1:]:
                    assert {"it", "that"} & set(split_words(t.question))  # named only by reference
                    if t.kind == "follow/size":
                        assert t.answer == referent.size
                    if t.kind == "follow/shape":
                        pytest.fail("the opening already named the shape")
            kinds = [t.kind.split("-")[0] for t in turns[1:]]
            assert len(kinds) == len(set(kinds))  # no attribute asked twice


def test_context_keeps_history_and_cuts_from_the_left():
    tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what colour is the star?", "red", "open/colour"),
                                                              Turn("what size is it?", "small", "follow/size")])])
    msgs = [{"role": "user", "content": "what colour is the star?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "what size is it?"}]
    ids = context_ids(tok, msgs, 48)
    assert tok.decode(ids) == f"{USER} what colour is the star {ASSISTANT} red {USER} what size is it"
    assert ids[-4:] == context_ids(tok, msgs, 4)  # the newest words survive truncation
    for bad, match in (([], "no messages"), ([{"role": "system", "content": "hi"}], "role"),
                       ([{"role": "user", "content": "  "}], "empty"), (msgs[:2], "last message")):
        with pytest.raises(InputError, match=match):
            context_ids(tok, bad, 48)
    turns = [Turn("q1?", "a1", "open/colour"), Turn("q2?", "a2", "follow/size")]
    assert turn_messages(turns, 1)[-2:] == [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2?"}]


def test_dialogue_report_separates_opening_and_follow_up_turns():
    turns = [Turn("q", "a red circle", "open/position"), Turn("q", "small", "follow/size"),
             Turn("q", "yes", "follow/relation")]
    report = dialogue_report(turns, ["red circle", "small", "no"])  # articles do not matter
    assert report["accuracy/turn-1"] == 1.0 and report["accuracy/follow-up"] == 0.5
    assert report["accuracy"] == pytest.approx(2 / 3) and report["turns"] == 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_shapes_world(tmp_path_factory.mktemp("chat") / "shapes", n=30, image_size=32, progress=False)


@pytest.fixture(scope="module")
def assistant(world):
    dialogues = read_dialogues(world, "train")
    torch.manual_seed(0)
    cfg = ChatModelConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, dim=16, heads=2,
                          grounding_layers=1, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0,
                          context=QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=32))
    return Assistant(cfg, build_chat_tokenizer(dialogues)).eval()


def test_dialogues_are_read_from_scenes(world):
    dialogues = read_dialogues(world, "test")
    assert dialogues and all(d.split == "test" and d.image.endswith(".png") for d in dialogues)
    assert read_dialogues(world, "test") == dialogues  # deterministic


def test_answer_depends_on_the_previous_turn(assistant, world):
    image = sorted((world / "images" / "test").glob("*.png"))[0]
    follow = {"role": "user", "content": "what size is it?"}
    history_a = [{"role": "user", "content": "what colour is the star?"}, {"role": "assistant", "content": "red"}]
    history_b = [{"role": "user", "content": "what shape is the blue object?"}, {"role": "assistant", "content": "circle"}]
    tok = assistant.tokenizer
    regions = assistant.encoder(torch.zeros(1, 3, 32, 32))
    states = [assistant.init_state(regions, torch.tensor([context_ids(tok, [*h, follow], 32)]))
              for h in (history_a, history_b)]
    logits = [assistant.decoder.step(torch.tensor([tok.bos_id]), s)[0] for s in states]
    assert not torch.allclose(logits[0], logits[1])  # same question, different history -> different answer scores
    reply = assistant.chat(image, [*history_a, follow])
    assert isinstance(reply, str)
    assert assistant.chat(image, [*history_a, follow], strategy="beam", beam_size=2) is not None
    with pytest.raises(InputError):
        assistant.chat(image, [*history_a])  # the last message is the assistant's


def test_training_step_lowers_the_loss(assistant, world):
    from polymodal.data.dialogue import ChatDataset, collate_chat
    from polymodal.data.qa import ImageBank

    dialogues = read_dialogues(world, "train")[:16]
    model = Assistant(assistant.cfg, assistant.tokenizer).train()
    bank = ImageBank([d.image for d in dialogues], 32, encode=model.encoder, progress=False)  # cached features
    good, rows = bank.keep(dialogues)
    data = ChatDataset(good, rows, bank.__getitem__, assistant.tokenizer, 32, 8)
    batch = collate_chat([data[i] for i in range(len(data))])
    assert "image_features" in batch
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        _, loss = model(batch)
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(float(loss["loss"].detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_round_trip_and_cli_chat(assistant, world, tmp_path, monkeypatch, capsys):
    import polymodal
    from polymodal.cli import main

    image = sorted((world / "images" / "test").glob("*.png"))[0]
    msgs = [{"role": "user", "content": "what colour is the star?"}]
    assistant.save_pretrained(tmp_path / "m")
    loaded = polymodal.load(tmp_path / "m")
    assert isinstance(loaded, Assistant) and loaded.chat(image, msgs) == assistant.chat(image, msgs)
    first = assistant.chat(image, msgs)
    second = assistant.chat(image, [*msgs, {"role": "assistant", "content": first},
                                    {"role": "user", "content": "what size is it?"}])
    monkeypatch.setattr(sys, "argv", ["polymodal", "chat", str(tmp_path / "m"), str(image)])
    monkeypatch.setattr(sys, "stdin", io.StringIO("what colour is the star?\n\n   \nwhat size is it?\nquit\nignored?\n"))
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out.strip().splitlines()
    assert exit_info.value.code in (0, None)
    assert out == [f"assistant: {first}", f"assistant: {second}"]  # history kept, blank lines skipped, quit ends


def test_answers_never_exceed_max_answer_len_and_defaults_validate_on_accuracy():
    """An untrained assistant never says <eos>: it must still stop at max_answer_len words; the chat task's
    default config keeps the model by a metric chat validation computes."""
    from PIL import Image

    from polymodal.data.dialogue import DialogueRecord, Turn, build_chat_tokenizer
    from polymodal.models.chat import Assistant, ChatModelConfig
    from polymodal.train.chat import ChatExperimentConfig

    tokenizer = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what colour is it?", "red", "open/colour")])])
    torch.manual_seed(0)
    assistant = Assistant(ChatModelConfig(image_size=32, max_answer_len=3), tokenizer)
    eos = tokenizer.eos_id
    with torch.no_grad():
        assistant.decoder.out.bias[eos] = -1e4  # never ends by itself
    reply = assistant.chat(Image.new("RGB", (32, 32)), [{"role": "user", "content": "what colour is it?"}])
    assert len(reply.split()) == 3
    assert ChatExperimentConfig().train.early_stop_metric == "val_accuracy"
