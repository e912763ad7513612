"""Trained caption controls (length, form, focus) for the prefix LM, and the word budget: target construction,
the control prompt reaching the LM, a tiny trained model obeying, one-line errors, the CLI and the server."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch

from polymodal.data.caption_controls import (
    CaptionControls,
    LengthBins,
    focus_phrases,
    form_caption,
    length_caption,
    point_on,
    sample_control,
    with_phrase_words,
)
from polymodal.data.controlled_captions import ControlledCaptionDataset, with_control_tokens
from polymodal.data.datasets import CaptionDataset, collate_captions
from polymodal.data.records import CaptionRecord
from polymodal.data.shapes import Scene, ShapeObject, ShapesWorld, render
from polymodal.errors import ConfigError, InputError
from polymodal.eval.control_obey import focus_obeys, form_of, length_obeys, named_objects, words
from polymodal.generate import GenerationConfig
from polymodal.models.word_controls import word_budget
from polymodal.text.tokenizer import BPETokenizer, WordTokenizer

from .conftest import polymodal_cli, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TWO = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5), ShapeObject("square", "blue", "large", 0.7, 0.3)),
            (40, 40, 40))
THREE = Scene((ShapeObject("star", "green", "small", 0.8, 0.8), ShapeObject("circle", "red", "large", 0.2, 0.2),
               ShapeObject("circle", "red", "small", 0.5, 0.6)), (40, 40, 40))
N_WORLD = 30  # 24 training scenes


# ---------------------------------------------------------------------------- targets
def test_length_targets_from_the_scene():
    assert length_caption(TWO, "short") == "a red circle and a blue square"
    assert length_caption(TWO, "normal") == "a small red circle to the left of a large blue square"
    assert length_caption(TWO, "detailed") == ("two shapes: a small red circle on the left and a large blue square "
                                               "in the top right")
    assert length_caption(THREE, "short") == "a red circle, a red circle and a green star"
    for scene in (TWO, THREE):
        counts = [len(words(length_caption(scene, n))) for n in ("short", "normal", "detailed")]
        assert counts == sorted(set(counts))  # strictly longer
        assert all(length_obeys(length_caption(scene, n), scene, n) for n in ("short", "normal", "detailed"))


def test_form_and_focus_targets():
    assert form_caption(THREE, "list") == "a large red circle, a small red circle, a small green star"
    assert form_caption(THREE, "sentence") == ("a large red circle above a small red circle to the left of a small "
                                               "green star")
    assert form_of(form_caption(THREE, "list"), 3) == "list" and form_of(form_caption(THREE, "sentence"), 3) == "sentence"
    big, small = THREE.objects[1], THREE.objects[2]
    assert focus_phrases(THREE, big) == [["large", "red", "circle"]]  # shares colour and shape with another
    assert focus_phrases(THREE, THREE.objects[0]) == [["green"], ["star"], ["green", "star"],
                                                      ["small", "green", "star"]]
    assert focus_obeys("a small red circle", small) and not focus_obeys("a red circle and a green star", small)
    assert named_objects("a large red circle above a star") == [("red", "circle"), ("", "star")]


def test_length_terciles_for_any_data():
    bins = LengthBins.fit(["a", "a b", "a b c", "a b c d", "a b c d e", "a b c d e f"])
    assert [bins.label(c) for c in ("a", "a b c", "a b c d e f g")] == ["short", "normal", "detailed"]
    rng = random.Random(0)
    prompts = {sample_control("a b c d e f", None, rng, ["length", "form", "focus"], 0.0, bins)[0][0]
               for _ in range(20)}
    assert prompts == {"<detailed>"}  # without a scene only length, and the reference's own tercile


def test_sampling_keeps_plain_captions():
    rng = random.Random(0)
    samples = [sample_control("ref", TWO, rng, ["length", "form", "focus"], 0.5) for _ in range(400)]
    plain = [s for s in samples if not s[0]]
    assert 150 < len(plain) < 250 and all(caption == "ref" for _, caption in plain)
    kinds = {s[0][0] for s in samples if s[0]}
    assert {"<short>", "<normal>", "<detailed>", "<list>", "<sentence>", "<focus>"} <= kinds
    focus = [s for s in samples if s[0] and s[0][0] == "<focus>"]
    assert all(s[1] in ("a small red circle", "a large blue square") for s in focus)


def test_focus_points_fall_on_the_object_cell():
    rng = random.Random(0)
    o = TWO.objects[0]
    for _ in range(50):
        x, y = point_on(o, rng)
        assert (x - o.x) ** 2 + (y - o.y) ** 2 <= o.radius ** 2
    assert CaptionControls(focus_box=(0.1, 0.4, 0.3, 0.6)).prompt() == CaptionControls(focus_point=(0.2, 0.5)).prompt()
    assert CaptionControls(focus_phrase="the red one").prompt() == ["<focus>", "red"]


def test_dataset_items_carry_the_prompt_without_loss_on_it(tmp_path):
    render(TWO, 32).save(tmp_path / "a.png")
    tok = with_control_tokens(WordTokenizer.build(
        [length_caption(TWO, n) for n in ("short", "normal", "detailed")] + [form_caption(TWO, "sentence")]))
    base = CaptionDataset([CaptionRecord("1", str(tmp_path / "a.png"), ["a red circle"])], tok, 32, 40, progress=False)
    data = ControlledCaptionDataset(base, ["length"], p_none=0.0, scenes={"1": TWO})
    items = [data[0] for _ in range(6)]
    for item in items:
        prompt = item["tokens"][: list(item["tokens"]).index(tok.bos_id)]
        assert len(prompt) == 1 and tok.words[int(prompt[0])] in ("<short>", "<normal>", "<detailed>")
        assert item["targets"][0] == tok.pad_id and len(item["targets"]) == len(item["tokens"]) - 1
        target = length_caption(TWO, tok.words[int(prompt[0])][1:-1])
        assert tok.decode(item["targets"][1:]) == tok.decode(tok.encode(target))  # (the word vocabulary drops ":")
    batch = collate_captions(items)
    assert batch["targets"].shape[1] == batch["tokens"].shape[1] - 1


# ---------------------------------------------------------------------------- the model
def _train(tmp_path_factory, steps: int = 300):
    from polymodal.train.tasks import load_task_config

    out = tmp_path_factory.mktemp("controls")
    task, cfg = load_task_config(None, [
        "task=prefix_lm", f"data.n={N_WORLD}", "data.render_size=32", "data.max_len=40", "model.image_size=32",
        "model.encoder.name=small_cnn", "model.encoder.width=16", "model.decoder.hidden_dim=48",
        "model.decoder.num_layers=2", "model.decoder.num_heads=4", "model.decoder.dropout=0", "prefix.pixel_shuffle=2",
        f"train.steps={steps}", "train.batch_size=32", "train.eval_every=0", f"train.out_dir={out}", "train.lr=0.003",
        "train.warmup_steps=10", "controls.enabled=true", "controls.p_none=0.25"])
    task(cfg, progress=False)
    return out / "model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import polymodal

    return polymodal.load(_train(tmp_path_factory))


@pytest.fixture(scope="module")
def world():
    w = ShapesWorld(N_WORLD, 0, 32)
    k = w.sizes["train"]
    return [w.scene("train", i) for i in range(k)], [w.image("train", i) for i in range(k)]


def test_saved_model_knows_its_controls(trained):
    assert trained.trained_controls == ("length", "form", "focus")
    assert trained.cfg.decoder.max_len >= 40 and "<focus>" in trained.tokenizer.index


def test_control_prompt_reaches_the_lm(trained, world, monkeypatch):
    seen = []
    original = type(trained).init_state

    def spy(self, images, prompts=None, use_cache=True):
        seen.append(prompts)
        return original(self, images, prompts, use_cache)

    monkeypatch.setattr(type(trained), "init_state", spy)
    images = world[1][:2]
    trained.caption(images, length="short")
    trained.caption(images, focus_point=(0.2, 0.5))
    trained.caption(images)
    tok = trained.tokenizer
    assert seen[0] == [[tok.index["<short>"]]] * 2
    assert seen[1] == [[tok.index["<focus>"], tok.index["<x1>"], tok.index["<y4>"]]] * 2
    assert seen[2] is None


def test_a_focus_phrase_is_said(trained, world):
    """With beam search the phrase's words are forced, so the object described is the one the phrase names;
    greedy decoding keeps the prompt alone."""
    images = world[1][:3]
    for caption in trained.caption(images, focus_phrase="the small red one", beam_size=3):
        assert {"small", "red"} <= set(words(caption)), caption
    assert with_phrase_words([], "the small red one", "greedy", 1) == [] and with_phrase_words([], None, "beam", 3) == []
    assert with_phrase_words([], "the small red one", "beam", 3) == ["small", "red"]
    assert with_phrase_words(["red"], "the small red one", "beam", 3) == ["red", "small"]  # each word once


def test_trained_model_obeys_length_and_form(trained, world):
    scenes, images = world
    for length in ("short", "normal", "detailed"):
        captions = trained.caption(images, length=length, strategy="greedy")
        share = sum(length_obeys(c, s, length) for c, s in zip(captions, scenes, strict=True)) / len(scenes)
        assert share >= 0.6, (length, share, captions[:3])
    for form in ("list", "sentence"):
        captions = trained.caption(images, form=form, strategy="greedy")
        share = sum(form_of(c, len(s.objects)) == form for c, s in zip(captions, scenes, strict=True)) / len(scenes)
        assert share >= 0.7, (form, share, captions[:3])
    short = trained.caption(images, length="short")
    detailed = trained.caption(images, length="detailed")
    assert sum(map(len, map(words, short))) < sum(map(len, map(words, detailed)))


@pytest.mark.parametrize("budget", [1, 2, 3, 5])
def test_word_budget_is_always_obeyed(trained, world, budget):
    images = world[1][:6]
    for settings in ({"strategy": "greedy"}, {"beam_size": 3, "num_return_sequences": 3},
                     {"strategy": "sample", "seed": 0, "num_return_sequences": 2}, {"length": "detailed"}):
        for per_image in trained.caption_nbest(images, max_new_words=budget, **settings):
            assert all(len(words(c)) <= budget for c in per_image), (settings, per_image)
    lstm = tiny_model()  # any captioner: the budget is decoding, not training
    assert all(len(words(c)) <= budget for c in lstm.caption(list(torch.randn(3, 3, 32, 32)), max_new_words=budget))


def test_word_budget_counts_words_not_commas():
    tok = with_control_tokens(WordTokenizer.build(
        ["a red circle, a blue square"]))
    ids = word_budget(tok, 2)["word_ids"]
    assert tok.index[","] not in ids and tok.index["<short>"] not in ids and tok.index["red"] in ids
    assert GenerationConfig(**word_budget(tok, 2)).max_new_words == 2
    bpe = BPETokenizer.build(["a small red circle to the left of a large blue hexagon"] * 20, vocab_size=60)
    budget, ids = word_budget(bpe, 2), bpe.encode("a small hexagon")
    assert sum(t in budget["word_ids"] for t in ids) == 3  # three words, in many pieces
    assert all(t in budget["word_ids"] or t in budget["continuation_ids"] for t in ids)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"focus_point": (1.5, 0.2)}, "outside the image"),
    ({"focus_box": (0.2, 0.2, 0.6, 0.2)}, "zero area"),
    ({"focus_point": (0.2, 0.2), "focus_phrase": "the red one"}, "contradict"),
    ({"length": "short", "form": "list"}, "cannot be combined"),
    ({"length": "tiny"}, "not one of short, normal, detailed"),
    ({"focus_phrase": "the zebra"}, "names no colour"),
    ({"max_new_words": 0}, "max_new_words must be"),
])
def test_bad_controls_are_one_line_errors(trained, world, kwargs, message):
    with pytest.raises(InputError) as info:
        trained.caption(world[1][:1], **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_controls_on_a_model_not_trained_for_them(tmp_path):
    import polymodal
    from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir

    model = polymodal.load(bundled_model_dir(BUNDLED_CAPTIONER))
    image = render(TWO, 64)
    for kwargs, name in (({"length": "short"}, "length"), ({"form": "list"}, "form"), ({"focus_phrase": "red"}, "focus")):
        with pytest.raises(InputError, match=f"not trained with the {name} control"):
            model.caption([image], **kwargs)
    with pytest.raises(InputError, match="not trained with the length control"):
        tiny_model().caption(list(torch.randn(1, 3, 32, 32)), length="short")
    assert model.caption([image]) == model.caption([image], max_new_words=64)  # the budget needs no training


def test_refining_captioner_names_the_control():
    from polymodal.models.refine import RefinerConfig, RefiningCaptioner

    model = RefiningCaptioner.from_captioner(tiny_model(), RefinerConfig(embed_dim=8, hidden_dim=16, attention_dim=8,
                                                                          draft_dim=8, dropout=0.0))
    with pytest.raises(InputError, match="not trained with the form control"):
        model.caption(list(torch.randn(1, 3, 32, 32)), form="list")


def test_init_from_a_trained_prefix_lm_grows_its_vocabulary(trained, tmp_path):
    """Controls added to a model trained without them: its weights carry over, the control tokens are new rows."""
    from polymodal.models.prefix_lm import PrefixConfig, PrefixLM
    from polymodal.train.tasks import load_task_config

    plain = PrefixLM(trained.cfg, WordTokenizer(trained.tokenizer.words[:20]), PrefixConfig(pixel_shuffle=2))
    plain.save_pretrained(tmp_path / "plain")
    task, cfg = load_task_config(None, [
        "task=prefix_lm", f"data.n={N_WORLD}", "data.render_size=32", f"init_from={tmp_path / 'plain'}",
        "train.steps=2", "train.batch_size=4", "train.eval_every=0", f"train.out_dir={tmp_path / 'run'}",
        "controls.enabled=true", "controls.kinds=[length]"])
    task(cfg, progress=False)
    import polymodal

    grown = polymodal.load(tmp_path / "run" / "model")
    assert grown.tokenizer.words[:20] == plain.tokenizer.words and "<short>" in grown.tokenizer.index
    assert grown.trained_controls == ("length",)
    with pytest.raises(InputError, match="not trained with the focus control"):
        grown.caption(list(torch.randn(1, 3, 32, 32)), focus_phrase="red")


def test_focus_marks_the_visual_token_under_the_point(trained):
    """The focus point's cell is marked on the image itself: one visual token changes, the one under the point."""
    assert trained.prefix_cfg.focus_marker
    tok, images = trained.tokenizer, torch.randn(2, 3, 32, 32)
    prompt = torch.tensor([[tok.index[w] for w in ("<focus>", "<x1>", "<y4>")], [tok.index["<short>"]] * 3])
    with torch.no_grad():
        changed = (trained.visual_tokens(images, prompt) - trained.visual_tokens(images)).abs().sum(-1) > 0
    side = int(changed.shape[1] ** 0.5)
    assert changed[0].nonzero().flatten().tolist() == [(4 * side // 8) * side + 1 * side // 8]
    assert not changed[1].any()  # no focus point: the image as it was


def test_a_new_focus_marker_starts_as_a_no_op(trained):
    """Going on from a model trained without the marker: it is added at zero, so the model starts unchanged."""
    import dataclasses

    from polymodal.models.prefix_lm import PrefixLM
    from polymodal.train.controls import load_grown

    plain = PrefixLM(trained.cfg, trained.tokenizer, dataclasses.replace(trained.prefix_cfg, focus_marker=False))
    marked = PrefixLM(trained.cfg, trained.tokenizer, trained.prefix_cfg)
    load_grown(marked, plain.state_dict())
    tok, images = trained.tokenizer, torch.randn(1, 3, 32, 32)
    prompt = torch.tensor([[tok.index[w] for w in ("<focus>", "<x6>", "<y2>")]])
    assert not marked.focus_marker.any()
    assert torch.equal(marked.visual_tokens(images, prompt), plain.visual_tokens(images, prompt))


def test_control_weights_draw_some_kinds_more_often():
    rng, scene = random.Random(0), TWO
    drawn = [sample_control("a red circle", scene, rng, ["length", "form", "focus"], 0.0, weights=[1, 1, 8])[0][0]
             for _ in range(400)]
    assert sum(w == "<focus>" for w in drawn) > 250  # 80% expected, against 33% unweighted


@pytest.mark.parametrize("share, by_phrase", [(0.0, 0), (1.0, 50)])
def test_phrase_share_picks_how_focus_is_asked(share, by_phrase):
    rng = random.Random(0)
    prompts = [sample_control("a red circle", TWO, rng, ["focus"], 0.0, phrase_share=share)[0] for _ in range(50)]
    assert all(p[0] == "<focus>" for p in prompts)
    assert sum(not p[1].startswith("<x") for p in prompts) == by_phrase  # a phrase's words, not a <xI> cell


def test_controls_config_is_checked():
    from polymodal.train.controls import ControlsConfig

    with pytest.raises(ConfigError, match="unknown control 'colour'"):
        ControlsConfig(kinds=["colour"]).check()
    with pytest.raises(ConfigError, match="controls.weights"):
        ControlsConfig(kinds=["length"], weights={"focus": 2.0}).check()
    with pytest.raises(ConfigError, match="phrase_share"):
        ControlsConfig(phrase_share=1.5).check()
    with pytest.raises(ConfigError, match="p_none"):
        ControlsConfig(p_none=1.0).check()


# ---------------------------------------------------------------------------- CLI and server
def test_cli_flags(trained, monkeypatch, capsys, tmp_path):
    model_dir = tmp_path / "m"
    trained.save_pretrained(model_dir)
    image = tmp_path / "a.png"
    render(TWO, 32).save(image)
    code, out, err = polymodal_cli(monkeypatch, capsys, "caption", str(model_dir), str(image), "--length", "short",
                                   "--max-new-words", "6", "--json")
    assert code == 0, err
    assert len(words(json.loads(out)["captions"][0])) <= 6
    code, out, _ = polymodal_cli(monkeypatch, capsys, "caption", str(model_dir), str(image), "--focus-point", "0.2,0.5")
    assert code == 0 and out.startswith(f"{image}: ")
    for args, message in ((["--focus-point", "1.5,0.2"], "outside the image"),
                          (["--focus-box", "0.1,0.1,0.1,0.5"], "zero area"),
                          (["--focus-point", "0.5"], "give 2 comma-separated numbers"),
                          (["--max-new-words", "0"], "max_new_words must be"),
                          (["--force", "red", "--ban", "red"], "both forced and banned"),
                          (["--length", "short", "--form", "list"], "cannot be combined")):
        code, out, err = polymodal_cli(monkeypatch, capsys, "caption", str(model_dir), str(image), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir

    code, _, err = polymodal_cli(monkeypatch, capsys, "caption", str(bundled_model_dir(BUNDLED_CAPTIONER)), str(image),
                                 "--form", "list")
    assert code == 2 and "not trained with the form control" in err


def test_server_fields(trained):
    from fastapi.testclient import TestClient

    from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir
    from polymodal.serve.app import create_app
    from polymodal.serve.engines import load_models

    buffer = io.BytesIO()
    render(TWO, 32).save(buffer, format="PNG")
    upload = {"image": ("a.png", buffer.getvalue(), "image/png")}
    models = {"controlled": trained, **load_models([bundled_model_dir(BUNDLED_CAPTIONER)])}
    with TestClient(create_app(models)) as client:
        info = {m["name"]: m["controls"] for m in client.get("/v1/models").json()["models"]}
        assert info["controlled"] == ["length", "form", "focus"] and info[BUNDLED_CAPTIONER] == []
        short = client.post("/v1/caption", files=upload, data={"model": "controlled", "length": "short",
                                                               "max_new_words": "8"})
        assert short.status_code == 200, short.text
        assert len(words(short.json()["captions"][0]["text"])) <= 8
        focus = client.post("/v1/caption", files=upload, data={"model": "controlled", "focus_point": "0.2,0.5"})
        assert focus.status_code == 200, focus.text
        phrase = client.post("/v1/caption", files=upload, data={"model": "controlled", "focus_phrase": "the blue one",
                                                                "beam_size": "3"})
        assert phrase.status_code == 200 and "blue" in words(phrase.json()["captions"][0]["text"]), phrase.text
        for data, message in (({"focus_point": "2,0.5"}, "outside the image"),
                              ({"focus_box": "0.1,0.1,0.5,0.1"}, "zero area"),
                              ({"length": "tiny"}, "length"), ({"max_new_words": "0"}, "max_new_words"),
                              ({"length": "short", "form": "list"}, "cannot be combined")):
            reply = client.post("/v1/caption", files=upload, data={"model": "controlled", **data})
            assert reply.status_code == 422 and message in reply.text, (data, reply.text)
        reply = client.post("/v1/caption", files=upload, data={"model": BUNDLED_CAPTIONER, "length": "short"})
        assert reply.status_code == 422 and "not trained with the length control" in reply.text


def test_an_unknown_word_spends_the_budget_like_any_word():
    tok = WordTokenizer.build(["a red circle, a square"])
    budget = word_budget(tok, 2)
    assert tok.unk_id in budget["word_ids"] and tok.index[","] not in budget["word_ids"]
