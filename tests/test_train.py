"""Training: a tiny model learns Shapes World captions; an interrupted run resumes bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from polymodal.config import load_config
from polymodal.errors import CheckpointError
from polymodal.train.captioning import train_captioner
from polymodal.train.trainer import EpochBatchSampler, is_better, lr_at


def _config(tmp_path, steps: int, decoder: str = "attention_lstm", **extra):
    overrides = [
        f"train.out_dir={tmp_path / 'run'}", f"train.steps={steps}", "train.batch_size=16",
        "train.warmup_steps=5", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=5",
        "train.lr=0.005", "data.n=120", "data.render_size=32", "model.image_size=32",
        "model.encoder.width=8", f"model.decoder.name={decoder}", "model.decoder.embed_dim=32",
        "model.decoder.hidden_dim=64", "model.decoder.attention_dim=32", "model.decoder.dropout=0.1",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def test_resume_gives_identical_weights(tmp_path):
    straight = _config(tmp_path / "a", steps=12)
    train_captioner(straight, progress=False)
    interrupted = _config(tmp_path / "b", steps=12)
    result = train_captioner(interrupted, progress=False, stop_at=7)  # a crash right after step 7's checkpoint
    assert result["step"] == 7
    resumed = train_captioner(interrupted, progress=False)
    assert resumed["step"] == 12
    a = load_file(str(tmp_path / "a" / "run" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_a_different_config(tmp_path):
    train_captioner(_config(tmp_path, steps=4), progress=False, stop_at=2)
    with pytest.raises(CheckpointError, match="different config"):
        train_captioner(_config(tmp_path, steps=4, **{"train.lr": 0.001}), progress=False)


@pytest.mark.parametrize("decoder", ["attention_lstm", "seed_lstm"])
def test_tiny_model_learns_captions_well_above_chance(tmp_path, decoder):
    from polymodal import load
    from polymodal.data.datasets import CaptionDataset, load_split
    from polymodal.train.captioning import caption_validation

    cfg = _config(tmp_path, steps=200, decoder=decoder)
    train_captioner(cfg, progress=False)
    model = load(tmp_path / "run")
    val = CaptionDataset(load_split(cfg.data, "val"), model.tokenizer, 32, 24, progress=False)
    metrics = caption_validation(model, val, decode_images=12)
    assert 0 <= metrics["cider"] and 0 <= metrics["exact_match"] <= 1
    # Chance is 1 / vocabulary (~1/45); predicting the most frequent word gets ~0.25.
    assert metrics["token_accuracy"] > 0.5, metrics
    assert metrics["loss"] < 1.5, metrics


def test_epoch_batches_are_a_permutation_and_resumable():
    sampler = EpochBatchSampler(size=10, batch_size=3, seed=1, epoch=2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=2, start=2)) == batches[2:]
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=3)) != batches


def test_schedule_warms_up_then_decays():
    cfg = load_config(None, ["train.steps=100", "train.warmup_steps=10"]).train
    values = [lr_at(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] > values[50] > values[99] >= 0.1


def test_refinement_trains_on_top_of_a_frozen_first_pass(tmp_path):
    import polymodal
    from polymodal.train.tasks import load_task_config

    train_captioner(_config(tmp_path / "first", steps=30), progress=False)
    first = polymodal.load(tmp_path / "first" / "run")
    task, cfg = load_task_config(None, [
        "task=refine", f"init_from={tmp_path / 'first' / 'run'}", f"train.out_dir={tmp_path / 'refine'}",
        "train.steps=10", "train.batch_size=16", "train.eval_every=0", "train.checkpoint_every=0",
        "data.n=120", "data.render_size=32", "refiner.embed_dim=16", "refiner.hidden_dim=32",
        "refiner.attention_dim=16", "refiner.draft_dim=16"])
    task(cfg, progress=False)
    refined = polymodal.load(tmp_path / "refine")
    assert type(refined).__name__ == "RefiningCaptioner"
    # The first pass is untouched by refinement training (compared by name: every first-pass weight) ...
    before, after = first.state_dict(), refined.state_dict()
    assert before.keys() <= after.keys(), sorted(before.keys() - after.keys())
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert {k.split(".")[0] for k in after.keys() - before.keys()} == {"draft_encoder", "refiner"}
    images = torch.randn(3, 3, 32, 32)
    assert refined.caption(images.unbind(0), refine=False) == first.caption(images.unbind(0))
    # ... and the second pass produces captions of its own through the shared generator.
    assert all(isinstance(c, str) for c in refined.caption(images.unbind(0), beam_size=3))


def test_error_metrics_are_kept_at_their_lowest():
    # the image tokenizer's early_stop_metric is val_mse: a lower reconstruction error is the better model
    assert is_better("val_mse", 0.001, 0.004) and not is_better("val_mse", 0.004, 0.001)
    assert is_better("val_loss", 1.0, 2.0) and is_better("val_accuracy", 0.9, 0.8) and is_better("cider", 1.2, 1.1)
