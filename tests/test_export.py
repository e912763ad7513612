"""ONNX export: the graphs compute what PyTorch computes, and onnxruntime greedy gives the same captions."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from polymodal.data.shapes import render, sample_scene
from polymodal.errors import CheckpointError, InputError
from polymodal.models.captioner import Captioner
from polymodal.serve.export import OnnxCaptioner, export_onnx
from tests.conftest import tiny_model


def image_sensitive(decoder: str) -> Captioner:
    """A tiny untrained captioner whose captions differ from image to image (so agreement means something)."""
    model = tiny_model(decoder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4 or (name.startswith("decoder") and p.ndim == 2):
                p.mul_(3.0)  # random init is nearly image-blind; larger weights carry the image through
    return model.eval()


@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    return [render(sample_scene(random.Random(i)), size=48) for i in range(8)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Captioner, Path]:
    model = image_sensitive("attention_lstm")
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx"), int8=True)


def test_graphs_match_pytorch(exported: tuple[Captioner, Path], scenes: list[Any]) -> None:
    model, out = exported
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["state"] == ["features", "keys", "h", "c"] and meta["attention"] and meta["int8"]
    images = model.preprocess(scenes[:3])  # batch 3: the graphs were traced with 2, the batch is dynamic
    encoder = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(out / "decoder_step.onnx"), providers=["CPUExecutionProvider"])
    state_onnx = dict(zip(meta["state"], encoder.run(meta["state"], {"images": images.numpy()}), strict=True))
    with torch.inference_mode():
        state = model.decoder.init_state(model.encoder(images))
        tokens = torch.tensor([1, 5, 7])
        logits, new_state, alpha = model.decoder.step(tokens, state)
    for name in meta["state"]:
        np.testing.assert_allclose(state_onnx[name], state[name].numpy(), rtol=1e-4, atol=1e-5)
    outputs = step.run(None, {"tokens": tokens.numpy(), **state_onnx})
    np.testing.assert_allclose(outputs[0], logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs[3], new_state["h"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs[-1], alpha.numpy(), rtol=1e-4, atol=1e-5)


def test_onnxruntime_greedy_gives_the_pytorch_captions(exported: tuple[Captioner, Path], scenes: list[Any]) -> None:
    model, out = exported
    reference = [c[0] for c in model.caption_nbest(scenes, strategy="greedy")]
    assert len(set(reference)) > 2, "the test model should caption different images differently"
    assert OnnxCaptioner(out).caption(scenes) == reference
    assert OnnxCaptioner(out).caption(scenes[:1]) == reference[:1]  # batch of one


def test_int8_graphs_are_smaller_and_run(exported: tuple[Captioner, Path], scenes: list[Any]) -> None:
    _, out = exported
    for name in ("encoder", "decoder_step"):
        assert (out / f"{name}.int8.onnx").stat().st_size < (out / f"{name}.onnx").stat().st_size
    captions = OnnxCaptioner(out, int8=True, threads=1).caption(scenes)
    assert len(captions) == len(scenes) and all(isinstance(c, str) and c for c in captions)


def test_cli_export_seed_lstm_with_check(tmp_path: Path, scenes: list[Any]) -> None:
    from typer.testing import CliRunner

    from polymodal.cli import app

    model = image_sensitive("seed_lstm")
    model.save_pretrained(tmp_path / "model")
    paths = []
    for i, scene in enumerate(scenes[:4]):
        paths.append(str(tmp_path / f"{i}.png"))
        scene.save(paths[-1])
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--onnx", str(tmp_path / "onnx"),
                                      *[arg for p in paths for arg in ("--check", p)]])
    assert result.exit_code == 0, result.output
    assert "fp32: 4/4 captions identical to PyTorch greedy" in result.output
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["state"] == ["h", "c"] and not meta["attention"] and not meta["int8"]
    with pytest.raises(CheckpointError, match="re-export with --int8"):
        OnnxCaptioner(tmp_path / "onnx", int8=True)
    with pytest.raises(CheckpointError, match="no onnx.json"):
        OnnxCaptioner(tmp_path)


def test_models_that_are_not_two_graphs_are_refused(tmp_path: Path) -> None:
    class TwoPass(Captioner):
        def generate(self, images: torch.Tensor, cfg: Any = None) -> Any:  # e.g. a refining second pass
            return super().generate(images, cfg)

    model = tiny_model()
    two_pass = TwoPass(model.cfg, model.tokenizer)
    with pytest.raises(InputError, match="TwoPass: ONNX export supports encoder"):
        export_onnx(two_pass, tmp_path)
