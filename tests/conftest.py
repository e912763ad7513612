"""Shared fixtures: tiny models and a small Shapes World on disk, made once per session."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.errors import CheckpointError
from polymodal.generate import GenerationConfig
from polymodal.models.captioner import Captioner
from polymodal.text.tokenizer import WordTokenizer

CAPTIONS = ["a red circle", "a small blue square left of a red circle", "two shapes: a green star and a circle",
            "a large yellow triangle above a purple diamond"]


@pytest.fixture(autouse=True, scope="session")
def _offline_cache(tmp_path_factory):
    """Keep generated data out of the user's cache and make sure nothing reaches the network."""
    os.environ["POLYMODAL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warnings.filterwarnings("ignore", message=".*random init.*")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is as fast, and far faster on a shared, loaded machine.

    Use per module: `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Shapes World scene of 2-3 objects as a PNG, for the page tests (a module may define its own)."""
    from polymodal.data.shapes import render, sample_scene

    path = tmp_path_factory.mktemp("page") / "scene.png"
    render(sample_scene(random.Random(3), min_objects=2, max_objects=3), size=128).save(path)
    return path


def tiny_model(decoder: str = "attention_lstm", seed: int = 0, size: int = 32) -> Captioner:
    torch.manual_seed(seed)
    cfg = ModelConfig(image_size=size, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(name=decoder, embed_dim=16, hidden_dim=32, attention_dim=16,
                                            feature_dim=16, max_len=12))
    return Captioner(cfg, WordTokenizer.build(CAPTIONS)).eval()


@pytest.fixture
def tiny_captioner() -> Captioner:
    return tiny_model()


def one_line_error(call) -> str:
    """The message of the CheckpointError `call()` raises, checked to be one line (what the CLI prints)."""
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_cache_matches_recompute(model, images: torch.Tensor) -> None:
    """Cached generation gives exactly the tokens and scores of full recomputation (greedy, beam, sampling)."""
    for cfg in (GenerationConfig(strategy="greedy", max_len=10, min_len=10),
                GenerationConfig(strategy="beam", beam_size=3, max_len=10, num_return_sequences=3),
                GenerationConfig(strategy="sample", num_return_sequences=2, max_len=10, seed=3)):
        cached = model.generate(images, cfg)
        full = model.generate(images, cfg, use_cache=False)
        assert [[h.tokens for h in per] for per in cached] == [[h.tokens for h in per] for per in full], cfg
        assert all(abs(a.score - b.score) < 1e-9 for pa, pb in zip(cached, full, strict=True)
                   for a, b in zip(pa, pb, strict=True))


def polymodal_cli(monkeypatch, capsys, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run `polymodal ARGS` in this process (a subprocess costs seconds of imports): status, stdout, stderr."""
    import io
    import sys

    from polymodal.cli import main

    monkeypatch.setattr(sys, "argv", ["polymodal", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def tiny_video_world(tmp_path_factory):
    """12 Shapes World clips of 32 px (folder, annotations, a bank of 8 raw frames per clip), shared by video tests."""
    from polymodal.data.audio import MelConfig
    from polymodal.data.clips import ClipBank, read_annotations
    from polymodal.data.shapes_video import write_shapes_video

    folder = write_shapes_video(tmp_path_factory.mktemp("sv") / "world", n=12, size=32, progress=False)
    clips = read_annotations(folder)
    bank = ClipBank.build(clips, folder, frames=8, size=32, mel=MelConfig(), encode=None, progress=False)
    return folder, clips, bank
