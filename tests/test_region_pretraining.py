"""Region pretraining: the offset head learns where in its cell each object's centre lies, and is off unless asked."""

from __future__ import annotations

import random

import pytest
import torch

from polymodal.config import EncoderConfig
from polymodal.data.images import image_to_uint8, normalize
from polymodal.data.shapes import render, sample_scene
from polymodal.nn.encoders import build_encoder
from polymodal.train.pretraining import RegionPretrainer, cell_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 16) -> dict[str, torch.Tensor]:
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = torch.stack([image_to_uint8(render(s, 64), 64) for s in scenes])
    return {"images": normalize(images), "tokens": torch.stack([cell_targets(s, 8) for s in scenes])}


def test_the_offset_head_is_trained_only_when_weighted():
    torch.manual_seed(0)
    batch = _batch()
    plain = RegionPretrainer(build_encoder(EncoderConfig(width=8)))
    assert plain.offsets is None and "offset" not in plain(batch)[1]
    model = RegionPretrainer(build_encoder(EncoderConfig(width=8)), offset_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch)[1]["offset"].detach().item()
    for _ in range(40):
        opt.zero_grad()
        model(batch)[1]["loss"].backward()
        opt.step()
    assert model(batch)[1]["offset"].detach().item() < 0.5 * first  # the offsets are learnable from the pixels


def test_offsets_are_given_only_under_objects():
    scene = sample_scene(random.Random(3))
    targets = cell_targets(scene, 8)
    empty = targets[:, 0] == 0
    assert empty.any() and targets[empty, 4:].eq(0).all()
    assert targets[~empty, 4:].abs().max() <= 0.8 * max(o.radius for o in scene.objects) * 8 + 1e-5
