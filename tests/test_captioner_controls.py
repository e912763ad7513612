"""Trained caption controls for the encoder-decoder captioners (task: captioning): the prompt read by the decoder
before <bos>, the same in training (teacher forcing) and decoding (stepped through), the focus marker on the region
features, saving what the model was trained with, and going on from a captioner trained without controls."""

from __future__ import annotations

import pytest
import torch

import polymodal
from polymodal.data.shapes import ShapesWorld
from polymodal.errors import ConfigError, InputError
from polymodal.generate import GenerationConfig
from polymodal.models.captioner import Captioner, CaptionerControls

pytestmark = pytest.mark.usefixtures("one_thread")

N_WORLD = 30
TINY = [f"data.n={N_WORLD}", "data.render_size=32", "data.max_len=40", "model.image_size=32",
        "model.encoder.name=small_cnn", "model.encoder.width=16", "model.decoder.hidden_dim=32",
        "model.decoder.num_layers=1", "model.decoder.num_heads=2", "model.decoder.dropout=0", "train.batch_size=16",
        "train.eval_every=0", "train.warmup_steps=2"]


def _train(out, decoder: str, steps: int, *extra: str):
    from polymodal.train.tasks import load_task_config

    task, cfg = load_task_config(None, ["task=captioning", *TINY, f"model.decoder.name={decoder}",
                                        f"train.steps={steps}", f"train.out_dir={out}", *extra])
    task(cfg, progress=False)
    return polymodal.load(out / "model")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A transformer captioner trained plainly, then on from it with controls (init_from)."""
    tmp = tmp_path_factory.mktemp("captioner_controls")
    plain = _train(tmp / "plain", "transformer", 20)
    controlled = _train(tmp / "controlled", "transformer", 40, f"init_from={tmp / 'plain'}", "controls.enabled=true")
    return plain, controlled, tmp


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld(N_WORLD, 0, 32)
    return [world.image("test", i) for i in range(2)]


def test_the_model_saves_and_reloads_its_controls(runs):
    plain, controlled, tmp = runs
    assert plain.trained_controls == () and controlled.trained_controls == ("length", "form", "focus")
    assert controlled.controls == CaptionerControls(["length", "form", "focus"], 8, True)
    assert controlled.cfg.decoder.max_len >= 40 and "<focus>" in controlled.tokenizer.index
    assert "controls" not in (tmp / "plain" / "model" / "config.json").read_text()


def test_going_on_from_a_captioner_keeps_its_words_and_weights(runs):
    plain, controlled, tmp = runs
    words = plain.tokenizer.words
    assert controlled.tokenizer.words[: len(words)] == words  # control tokens appended, old ids unchanged
    start = polymodal.load(tmp / "plain" / "model")
    assert start.decoder.feature_proj[0].weight.shape == controlled.decoder.feature_proj[0].weight.shape


def test_decoding_after_a_prompt_matches_teacher_forcing(runs):
    """The prompt stepped through the decoder gives the same next-token logits as the teacher-forced sequence."""
    _, model, _ = runs
    tok = model.tokenizer
    prompt = [tok.index[w] for w in ("<focus>", "<x2>", "<y5>")]
    words = tok.encode("a small red circle")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = torch.tensor([[*prompt, tok.bos_id, *words, tok.eos_id]] * 2)
        forced, _ = model({"images": images, "tokens": tokens})  # (B, L - 1, V): after each input token
        state = model.init_state(images, [prompt, prompt])
        stepped = []
        for t in [tok.bos_id, *words]:
            logits, state, _ = model.decoder.step(torch.tensor([t, t]), state)
            stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), forced[:, len(prompt):], atol=1e-4, rtol=1e-4)


def test_the_focus_marker_changes_only_the_region_under_the_point(runs):
    _, model, _ = runs
    tok = model.tokenizer
    features = torch.randn(2, 64, model.encoder.out_dim)
    model.focus_marker.data.fill_(1.0)
    try:
        prompt = torch.tensor([[tok.index[w] for w in ("<focus>", "<x1>", "<y4>")], [tok.index["<short>"]] * 3])
        changed = (model._marked(features, prompt) - features).abs().sum(-1) > 0
    finally:
        model.focus_marker.data.zero_()
    assert changed[0].nonzero().flatten().tolist() == [4 * 8 + 1] and not changed[1].any()


def test_controls_reach_the_decoder_and_bad_ones_are_one_line(runs, images):
    plain, model, _ = runs
    for kwargs in ({"length": "short"}, {"form": "list"}, {"focus_point": (0.2, 0.5)}, {"max_new_words": 3}):
        captions = model.caption(images, beam_size=2, **kwargs)
        assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
        assert not any(w.startswith("<") for c in captions for w in c.split())  # control tokens are never said
    assert all(len(c.split()) <= 3 for c in model.caption(images, max_new_words=3))
    with pytest.raises(InputError, match="not trained with the length control"):
        plain.caption(images, length="short")
    with pytest.raises(InputError, match="outside the image"):
        model.caption(images, focus_point=(1.5, 0.2))
    with pytest.raises(ConfigError, match="one per image"):
        model.generate(model.preprocess(images), GenerationConfig(), prompts=[[5], [5, 6]])


def test_any_decoder_takes_the_prompt(tmp_path, images):
    model = _train(tmp_path / "lstm", "attention_lstm", 4, "controls.enabled=true", "controls.kinds=[length]")
    assert isinstance(model, Captioner) and model.trained_controls == ("length",) and not model.controls.marker
    assert len(model.caption(images, length="detailed", max_len=8)) == 2
