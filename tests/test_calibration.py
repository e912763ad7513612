"""Calibrated VQA confidence: ECE by hand, temperature fitting, old checkpoints, training, the CLI and API fields."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import polymodal
from polymodal.config import EncoderConfig, TrainConfig
from polymodal.errors import CheckpointError, ConfigError
from polymodal.eval.calibration import confidence_split, ece, fit_temperature, reliability_table
from polymodal.eval.ood import FeatureStats, pooled_image_features
from polymodal.models.vqa import QuestionEncoderConfig, VQAModel, VQAModelConfig
from polymodal.nn.fusion.base import FusionConfig
from polymodal.serve import create_app
from polymodal.text.tokenizer import SPECIALS, WordTokenizer

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTION = "what colour is the circle?"
ANSWERS = ["red", "blue", "green"]


def tiny_vqa(**cfg) -> VQAModel:
    torch.manual_seed(0)
    config = VQAModelConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, dim=16,
                            question=QuestionEncoderConfig(embed_dim=8, hidden_dim=16, max_len=12),
                            fusion=FusionConfig(dim=16, hidden=16, heads=2), **cfg)
    return VQAModel(config, WordTokenizer([*SPECIALS, *QUESTION.rstrip("?").split()]), ANSWERS).eval()


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- metrics
def test_ece_and_reliability_by_hand():
    # bin (0.8, 0.867]: 0.85 x 2, one right -> |0.5 - 0.85| * 2/4; bin (0.2, 0.267]: 0.25 x 2, none right
    assert ece([0.85, 0.85, 0.25, 0.25], [1, 0, 0, 0]) == pytest.approx(0.35 * 0.5 + 0.25 * 0.5)
    assert ece([0.7, 0.7, 0.7], [True, True, False]) == pytest.approx(0.7 - 2 / 3)
    assert ece([0.6] * 10, [1] * 6 + [0] * 4) == pytest.approx(0.0)
    assert ece([1.0, 0.0], [1, 0], bins=1) == pytest.approx(0.0)  # one bin: |mean conf - mean acc|
    rows = reliability_table([0.05, 0.96, 0.92, 0.9], [0, 1, 0, 1], bins=10)  # bins are (low, high]
    assert rows == [{"low": 0.0, "high": 0.1, "count": 1, "confidence": 0.05, "accuracy": 0.0},
                    {"low": 0.8, "high": 0.9, "count": 1, "confidence": 0.9, "accuracy": 1.0},
                    {"low": 0.9, "high": 1.0, "count": 2, "confidence": 0.94, "accuracy": 0.5}]
    assert confidence_split([0.2, 0.9], [0, 1], 0.5) == {"not_sure_share": 0.5, "accuracy_confident": 1.0,
                                                          "accuracy_not_sure": 0.0}
    with pytest.raises(ConfigError, match="as many confidences"):
        ece([0.5, 0.5], [1])


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_fit_recovers_a_known_temperature_and_lowers_ece(true_t):
    g = torch.Generator().manual_seed(1)
    calibrated = 1.5 * torch.randn(6000, 6, generator=g)
    labels = torch.multinomial(calibrated.softmax(-1), 1, generator=g).squeeze(1)
    logits = true_t * calibrated  # over-confident (T > 1) or under-confident (T < 1) by a known factor
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.08)
    conf, pred = logits.softmax(-1).max(-1)
    scaled = (logits / t).softmax(-1).max(-1).values
    assert ece(scaled, pred == labels) < 0.02 < ece(conf, pred == labels)
    with pytest.raises(ConfigError, match="labels must lie"):
        fit_temperature(logits, labels + 10)


# ----------------------------------------------------------------------------- checkpoints
def test_a_vqa_model_saved_before_calibration_loads_with_t_1(tmp_path: Path):
    model = tiny_vqa()
    model.temperature = 2.0
    model.save_pretrained(tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["calibration"] == {"temperature": 2.0} and config["model"]["confidence"] == 0.5
    loaded = polymodal.load(tmp_path / "new")
    image = png()
    assert loaded.temperature == 2.0 and torch.equal(loaded.predict(image, QUESTION), model.predict(image, QUESTION))

    del config["calibration"], config["model"]["confidence"]  # as saved before calibration existed
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    old = polymodal.load(tmp_path / "new")
    assert old.temperature == 1.0 and old.cfg.confidence == 0.5
    raw = old({"images": old.preprocess([image]), "tokens": torch.tensor([old.tokenizer.encode(QUESTION)])})[0]
    assert torch.allclose(old.predict(image, QUESTION), raw.softmax(-1))
    assert old.answer(image, QUESTION) == model.answer(image, QUESTION)  # temperature never changes the answer
    assert loaded.answer_topk(image, QUESTION, k=1)[0][0][1] < old.answer_topk(image, QUESTION, k=1)[0][0][1]

    config["calibration"] = {"temperature": -1}
    (tmp_path / "new" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="calibration.temperature' must be a positive number"):
        polymodal.load(tmp_path / "new")
    with pytest.raises(ConfigError, match="model.confidence must be a probability"):
        VQAModelConfig(confidence=1.5)


def test_training_saves_the_temperature_ood_statistics_and_ece(tmp_path: Path):
    from polymodal.data.shapes import write_shapes_world
    from polymodal.train.vqa import PretrainConfig, QADataConfig, VQAExperimentConfig, train_vqa

    world = write_shapes_world(tmp_path / "shapes", n=60, image_size=32, progress=False)
    model = tiny_vqa().cfg
    cfg = VQAExperimentConfig(model=model, data=QADataConfig(path=str(world), n=60, render_size=32),
                              pretrain=PretrainConfig(steps=0),
                              train=TrainConfig(out_dir=str(tmp_path / "run"), steps=30, batch_size=32, lr=5e-3,
                                                warmup_steps=2, eval_every=0, checkpoint_every=0, log_every=1000))
    summary = train_vqa(cfg, progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibration"]
    assert metrics["temperature"] == summary["calibration"]["temperature"] > 0
    assert {"ece_before", "ece_after", "not_sure_share", "reliability"} <= set(metrics["test"])
    assert metrics["test"]["questions"] > 0 and 0 <= metrics["test"]["ece_after"] <= 1
    assert sum(row["count"] for row in metrics["test"]["reliability"]) == metrics["test"]["questions"]
    loaded = polymodal.load(tmp_path / "run")
    assert loaded.temperature == pytest.approx(metrics["temperature"], abs=1e-4)
    assert loaded.ood_stats is not None and loaded.ood_stats.threshold == pytest.approx(summary["ood_threshold"],
                                                                                       abs=1e-3)


# ----------------------------------------------------------------------------- CLI and API
def test_cli_says_not_sure_and_warns_about_unfamiliar_images(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "scene.png").write_bytes(png())
    image = str(tmp_path / "scene.png")
    model = tiny_vqa(confidence=1.0)  # nothing reaches probability 1: always "not sure"
    model.save_pretrained(tmp_path / "unsure")
    code, out, err = polymodal_cli(monkeypatch, capsys, "vqa", str(tmp_path / "unsure"), image, QUESTION)
    p = model.answer_topk(image, QUESTION, k=1)[0][0][1]
    assert code == 0 and out.strip() == f"not sure (p={p:.2f}): {model.answer(image, QUESTION)[0]}" and err == ""

    model = tiny_vqa(confidence=0.0)
    model.save_pretrained(tmp_path / "sure")
    assert pooled_image_features(model, [png()]).shape == (1, model.encoder.out_dim)  # VQA models give OOD features
    FeatureStats(torch.zeros(model.encoder.out_dim), torch.eye(model.encoder.out_dim), threshold=-1.0).save(
        tmp_path / "sure")  # every image is out of distribution
    code, out, err = polymodal_cli(monkeypatch, capsys, "vqa", str(tmp_path / "sure"), image, QUESTION)
    assert code == 0 and out.strip() == model.answer(image, QUESTION)[0]
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"warning: {image}: unlike the images")


def test_api_returns_calibrated_probability_confidence_and_ood(tmp_path: Path):
    unsure, sure = tiny_vqa(confidence=1.0), tiny_vqa(confidence=0.0)
    dim = sure.encoder.out_dim
    sure.ood_stats = FeatureStats(torch.zeros(dim), torch.eye(dim), threshold=1e9)
    body = {"image": base64.b64encode(png()).decode(), "question": QUESTION, "k": 2}
    with TestClient(create_app({"unsure": unsure, "sure": sure})) as client:
        r = client.post("/v1/vqa", json={**body, "model": "unsure"}).json()
        assert r["confident"] is False and r["probability"] == pytest.approx(r["answers"][0]["score"])
        assert r["in_distribution"] is None and r["ood_score"] is None  # saved without statistics
        r = client.post("/v1/vqa", json={**body, "model": "sure"}).json()
        assert r["confident"] is True and r["in_distribution"] is True and r["ood_score"] >= 0
