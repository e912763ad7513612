"""Model directories: exact round trip, atomic writes, clear errors for broken directories."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import polymodal
from polymodal.checkpoint import atomic_directory
from polymodal.data.images import image_to_tensor
from polymodal.errors import CheckpointError, InputError

from .conftest import tiny_model


def test_round_trip_reproduces_outputs(tmp_path, tiny_captioner):
    tiny_captioner.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json"]
    again = polymodal.load(tmp_path / "m")
    before, after = tiny_captioner.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([tiny_captioner.tokenizer.encode("a red circle")] * 2)
    with torch.no_grad():  # the decoder too, not only the encoder: teacher-forced logits, bit for bit
        assert torch.equal(tiny_captioner({"images": images, "tokens": tokens})[0],
                           again({"images": images, "tokens": tokens})[0])
    assert torch.equal(tiny_captioner.encoder(images), again.encoder(images))
    assert tiny_captioner.caption(images.unbind(0)) == again.caption(images.unbind(0))


def test_caption_accepts_paths_pil_and_tensors(tmp_path, tiny_captioner):
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    img.paste((20, 40, 220), (0, 0, 20, 30))  # two halves: resizing and colour order show in the pixels
    img.save(tmp_path / "a.png")
    size = tiny_captioner.cfg.image_size
    tensor = image_to_tensor(img, size)  # the documented tensor input: normalised (3, H, W)
    from_pil = tiny_captioner.preprocess(img)
    assert from_pil.shape == (1, 3, size, size)
    assert torch.equal(tiny_captioner.preprocess([tmp_path / "a.png"]), from_pil)
    torch.testing.assert_close(tiny_captioner.preprocess(tensor), from_pil)
    big = tiny_captioner.preprocess(image_to_tensor(img, 2 * size))  # a tensor of another size is resized
    assert big.shape == (1, 3, size, size) and (big - from_pil).abs().mean() < 0.1
    from_path = tiny_captioner.caption([tmp_path / "a.png"])
    assert from_path == tiny_captioner.caption(img) == tiny_captioner.caption(tensor)
    assert isinstance(from_path[0], str)
    with pytest.raises(InputError, match=r"must be \(3, H, W\)"):
        tiny_captioner.caption(tensor[:1])


def test_atomic_directory_leaves_old_copy_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp directory left behind


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
     "not a readable safetensors"),
    (lambda d: (d / "model.safetensors").unlink(), "file missing"),
    (lambda d: (d / "config.json").write_text("{broken"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text('{"model": {}}'), "no 'architecture'"),
    (lambda d: (d / "config.json").write_text('{"architecture": "teleporter"}'), "unknown architecture"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json missing"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04\x95pickle"), "not a readable safetensors"),
])
def test_broken_model_dirs_give_clear_errors(tmp_path, tiny_captioner, damage, message):
    folder = tiny_captioner.save_pretrained(tmp_path / "m")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        polymodal.load(folder)


def test_config_and_weights_mismatch_is_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["decoder"]["hidden_dim"] = 48
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        polymodal.load(tmp_path / "m")


def test_tokenizer_mismatch_is_refused(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    words = json.loads((tmp_path / "m" / "tokenizer.json").read_text())
    words["words"].append("extra")
    (tmp_path / "m" / "tokenizer.json").write_text(json.dumps(words))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        polymodal.load(tmp_path / "m")


def test_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        polymodal.load(tmp_path / "nope")
