"""Attention heatmaps (files, sizes, the `caption --heatmaps` option) and training curves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.errors import DataError, InputError
from polymodal.eval.viz import attention_heatmaps, caption_heatmaps, plot_training_curves, read_log_series

from .conftest import tiny_model


def _valid_png(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.verify()  # raises on a truncated or corrupt file
    img = Image.open(path)
    assert img.format == "PNG"
    return img


def test_heatmaps_one_png_per_word_plus_grid(tmp_path):
    image = Image.new("RGB", (48, 48), "white")
    attention = torch.softmax(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    paths = attention_heatmaps(image, ["a", "<unk>", ","], attention, tmp_path / "out")
    assert [p.name for p in paths] == ["00_a.png", "01_unk.png", "02_comma.png", "grid.png"]
    for path in paths[:-1]:
        assert _valid_png(path).size == (48, 48)
    assert _valid_png(paths[-1]).size[0] > 48


def test_heatmap_is_hot_where_the_attention_is(tmp_path):
    attention = torch.zeros(1, 4)
    attention[0, 3] = 1.0  # bottom-right cell of a 2 x 2 grid
    path = attention_heatmaps(Image.new("RGB", (60, 40), "black"), ["x"], attention, tmp_path, grid=False)[0]
    pixels = np.asarray(_valid_png(path), dtype=float)
    assert pixels.shape == (40, 40, 3)  # the centre square the model saw
    red = pixels[..., 0] - pixels[..., 2]  # "jet": hot = red, cold = blue
    assert red[30:, 30:].mean() > 50 > red[:10, :10].mean()


def test_heatmaps_refuse_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="2 words but 1 rows"):
        attention_heatmaps(Image.new("RGB", (8, 8)), ["a", "b"], torch.ones(1, 4), tmp_path)
    with pytest.raises(ValueError, match="not a square grid"):
        attention_heatmaps(Image.new("RGB", (8, 8)), ["a"], torch.ones(1, 5), tmp_path)


def test_caption_heatmaps_from_a_tiny_attention_model(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    captions, paths = caption_heatmaps(tiny_model(), tmp_path / "red.png", tmp_path / "maps", beam_size=2,
                                       num_return_sequences=2)
    assert len(captions) == 2
    words = captions[0].replace(",", " ,").split()
    assert len(paths) == len(words) + 1 and paths[-1].name == "grid.png"
    assert all(_valid_png(p).size == (32, 32) for p in paths[:-1])


def test_caption_heatmaps_refuses_a_model_without_attention(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="has no attention"):
        caption_heatmaps(tiny_model("seed_lstm"), tmp_path / "a.png", tmp_path / "maps")


def test_caption_cli_writes_heatmaps_and_refuses_seed_model(tmp_path):
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "blue.png")
    attention_dir = tiny_model().save_pretrained(tmp_path / "att")
    seed_dir = tiny_model("seed_lstm").save_pretrained(tmp_path / "seed")
    cmd = [sys.executable, "-m", "polymodal", "caption"]
    run = subprocess.run([*cmd, str(attention_dir), str(tmp_path / "blue.png"), "--heatmaps", str(tmp_path / "h")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "h" / "blue" / "grid.png").is_file()
    assert "heatmaps:" in run.stdout
    run = subprocess.run([*cmd, str(seed_dir), str(tmp_path / "blue.png"), "--heatmaps", str(tmp_path / "h2")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "no attention" in run.stderr


LOG = [
    {"step": 5, "loss": 4.0, "caption_loss": 3.9, "grad_norm": 2.0, "lr": 0.001, "epoch": 0},
    {"step": 10, "loss": 3.0, "caption_loss": 2.9, "grad_norm": 1.5, "lr": 0.002, "epoch": 0},
    {"step": 10, "val_loss": 3.2, "val_token_accuracy": 0.4, "note": "text is ignored", "flag": True},
    {"step": 15, "loss": 2.5, "caption_loss": 2.4, "grad_norm": 1.1, "lr": 0.002, "epoch": 1},
    {"step": 15, "summary": {"step": 15, "best": 3.2}},
]


def test_training_curves_from_a_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in LOG) + "\n", encoding="utf-8")
    series = read_log_series(log)
    assert sorted(series) == ["caption_loss", "grad_norm", "loss", "lr", "val_loss", "val_token_accuracy"]
    assert series["loss"] == ([5, 10, 15], [4.0, 3.0, 2.5])
    assert series["val_token_accuracy"] == ([10], [0.4])
    out = plot_training_curves(log, tmp_path / "plots" / "curves.png")
    width, height = _valid_png(out).size
    assert height > width  # four stacked panels


def test_training_curves_report_a_broken_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(LOG[0]) + "\n{\"step\": 10, \"lo\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        plot_training_curves(log, tmp_path / "c.png")
    log.write_text(json.dumps({"summary": {}}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="no numeric values"):
        plot_training_curves(log, tmp_path / "c.png")
