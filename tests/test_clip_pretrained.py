"""Pretrained CLIP folders: parity with transformers.CLIPModel and open_clip.CLIP on tiny random models
the tests save themselves, the key maps checked both ways, bad folders as one-line errors, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import polymodal
from polymodal.data.images import IMAGENET_MEAN, IMAGENET_STD
from polymodal.models.clip_folder import clip_layout, load_clip_folder
from polymodal.nn.clip import CLIP_MEAN, CLIP_STD, toy_clip_tokenizer
from polymodal.nn.clip_keys import hf_key_map, openclip_key_map

from .conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a red circle", "A  blue square!", "a circle, a square and a red blue circle", "red"]
TOL = 1e-5


def _tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt of the toy CLIP BPE (as a Hugging Face CLIP folder carries them)."""
    bpe = json.loads(toy_clip_tokenizer().to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_clip")
    _tokenizer_files(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(0)
    reference = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # random, not HF's near-constant init, so a swapped tensor would show
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(folder)
    return folder, reference


def _clip_pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _as_imagenet(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP-normalized pixels -> the ImageNet-normalized input every polymodal image tower takes."""
    rgb = pixels * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    return (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_hf_folder_matches_transformers_clip(hf_folder):
    from transformers import CLIPTokenizer

    folder, reference = hf_folder
    assert clip_layout(folder) == "hf"
    model = polymodal.load(folder)  # the public API recognises the folder
    assert model.cfg.vit.mlp_ratio == 2.0 and model.cfg.embed_dim == 16
    pixels = _clip_pixels()
    hf_tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    ids = model.tokenize(TEXTS)
    theirs = hf_tok(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, theirs)  # same BPE, same specials, same padding
    with torch.no_grad():
        hf_img = reference.get_image_features(pixel_values=pixels)
        hf_txt = reference.get_text_features(input_ids=theirs)
        hf_img, hf_txt = (getattr(x, "pooler_output", x) for x in (hf_img, hf_txt))
        ours_img = model.encode_image(_as_imagenet(pixels), normalize=False)
        ours_txt = model.encode_text(ids, normalize=False)
    err_img, err_txt = (ours_img - hf_img).abs().max().item(), (ours_txt - hf_txt).abs().max().item()
    print(f"HF parity: image max |diff| {err_img:.2e}, text max |diff| {err_txt:.2e}")
    assert err_img < TOL and err_txt < TOL
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_saved_clip_dual_encoder_round_trips(hf_folder, tmp_path):
    folder, _ = hf_folder
    model = load_clip_folder(folder)
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "text_tower" / "tokenizer.json").is_file()
    again = polymodal.load(saved)
    assert torch.equal(again.tokenize(TEXTS), model.tokenize(TEXTS))
    assert torch.allclose(again.embed_texts(TEXTS), model.embed_texts(TEXTS), atol=1e-6)
    image = Image.new("RGB", (50, 40), "red")
    assert torch.allclose(again.embed_images([image]), model.embed_images([image]), atol=1e-6)


def _openclip_model(act_quick: bool, vocab: int):
    open_clip = pytest.importorskip("open_clip")
    vision = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8}
    text = {"context_length": 16, "vocab_size": vocab, "width": 32, "heads": 4, "layers": 2}
    torch.manual_seed(1)
    model = open_clip.CLIP(16, vision, text, quick_gelu=act_quick).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, {"embed_dim": 16, "quick_gelu": act_quick, "vision_cfg": vision, "text_cfg": text}


@pytest.mark.parametrize("quick,weights", [(True, "safetensors"), (False, "bin")])
def test_openclip_folder_matches_open_clip(tmp_path, quick, weights):
    vocab = toy_clip_tokenizer().get_vocab_size()
    reference, cfg = _openclip_model(quick, vocab)
    (tmp_path / "ViT-toy.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if weights == "safetensors":
        save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_1.bin")
    toy_clip_tokenizer().save(str(tmp_path / "tokenizer.json"))
    assert clip_layout(tmp_path) == "openclip"
    model = polymodal.load(tmp_path)
    assert model.cfg.vit.act == ("quick_gelu" if quick else "gelu")
    ids = model.tokenize(TEXTS)
    pixels, ids = _clip_pixels(1), torch.nn.functional.pad(ids, (0, 16 - ids.shape[1]))  # open_clip: pad 0 to 16
    with torch.no_grad():
        err_img = (model.encode_image(_as_imagenet(pixels)) - reference.encode_image(pixels, normalize=True))
        err_txt = (model.encode_text(ids) - reference.encode_text(ids, normalize=True))
    err_img, err_txt = err_img.abs().max().item(), err_txt.abs().max().item()
    print(f"OpenCLIP parity ({weights}, quick_gelu={quick}): image {err_img:.2e}, text {err_txt:.2e}")
    assert err_img < TOL and err_txt < TOL
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_key_maps_cover_every_tensor_both_ways(hf_folder):
    folder, reference = hf_folder
    ours = set(load_clip_folder(folder).state_dict())
    hf = hf_key_map(2, 2)
    assert set(hf) == ours
    assert {k for src in hf.values() for k in src.keys} == set(reference.state_dict()) - {
        "vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"}
    oc = openclip_key_map(2, 2)
    assert set(oc) == ours
    reference_oc, _ = _openclip_model(True, 49)  # skipped here if open_clip is not installed
    assert {k for src in oc.values() for k in src.keys} == set(reference_oc.state_dict()) - {"attn_mask"}


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_missing_extra_and_misshapen_keys_name_file_and_key(hf_folder, tmp_path):
    folder = _copy(hf_folder[0], tmp_path)
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    good = dict(state)
    del state["text_model.final_layer_norm.bias"]
    state["text_model.extra.weight"] = torch.zeros(2)
    save_file(state, str(weights))
    message = one_line_error(lambda: load_clip_folder(folder))
    assert str(weights) in message and "missing ['text_model.final_layer_norm.bias']" in message
    assert "unexpected ['text_model.extra.weight']" in message
    good["visual_projection.weight"] = torch.zeros(16, 8)
    save_file(good, str(weights))
    message = one_line_error(lambda: load_clip_folder(folder))
    assert "shape mismatch ['visual_projection.weight (16, 8) -> image_proj.weight (16, 32)']" in message


def test_not_a_clip_folder_and_broken_configs(hf_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    message = one_line_error(lambda: load_clip_folder(tmp_path / "empty"))
    assert "not a CLIP checkpoint folder" in message
    folder = _copy(hf_folder[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["vision_config"]["patch_size"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "vision_config lacks patch_size" in one_line_error(lambda: load_clip_folder(folder))
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    config["vision_config"]["patch_size"] = 8
    (folder / "config.json").write_text(json.dumps(config))
    assert "no CLIP tokenizer" in one_line_error(lambda: load_clip_folder(folder))


def test_openclip_config_with_unsupported_options_is_refused(tmp_path):
    cfg = {"embed_dim": 16, "vision_cfg": {"layers": [3, 4, 6, 3], "width": 64}, "text_cfg": {}}
    (tmp_path / "RN50.json").write_text(json.dumps(cfg))
    assert "ResNet image tower" in one_line_error(lambda: load_clip_folder(tmp_path))
    cfg["vision_cfg"] = {"attentional_pool": True}
    (tmp_path / "RN50.json").write_text(json.dumps(cfg))
    assert "vision_cfg.attentional_pool=True is not supported" in one_line_error(lambda: load_clip_folder(tmp_path))


def test_cli_index_retrieve_with_a_clip_folder(hf_folder, tmp_path):
    from polymodal.cli import app

    folder, _ = hf_folder
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in (("red.png", "red"), ("blue.jpg", "blue"), ("green.png", "green")):
        Image.new("RGB", (48, 40), colour).save(photos / name)
    runner = CliRunner()
    built = runner.invoke(app, ["index", str(photos), "--model", str(folder), "--out", str(tmp_path / "idx"),
                                "--quiet"])
    assert built.exit_code == 0, built.output
    assert "indexed 3 images" in built.output
    found = runner.invoke(app, ["retrieve", str(tmp_path / "idx"), "a red circle", "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.output)) == 2
    by_image = runner.invoke(app, ["retrieve", str(tmp_path / "idx"), "--image", str(photos / "red.png"), "-k", "1"])
    assert by_image.exit_code == 0 and by_image.output.split()[1:] == ["+1.000", str(photos / "red.png")]


def test_cli_bad_clip_folder_exits_2_with_one_line(hf_folder, tmp_path):
    folder = _copy(hf_folder[0], tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["logit_scale"]
    save_file(state, str(folder / "model.safetensors"))
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    result = subprocess.run([sys.executable, "-m", "polymodal", "index", str(tmp_path / "photos"), "--model",
                             str(folder), "--out", str(tmp_path / "idx")], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "model.safetensors" in lines[0] and "logit_scale" in lines[0]


def test_cli_zeroshot_with_a_clip_folder(hf_folder, tmp_path):
    from polymodal.cli import app
    from polymodal.data.shapes import write_shapes_world
    from polymodal.eval.zero_shot import single_object_images

    world = write_shapes_world(tmp_path / "world", n=150, image_size=32, progress=False)
    result = CliRunner().invoke(app, ["zeroshot", str(hf_folder[0]), "--data", str(world), "--task", "colour",
                                      "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output[result.output.index('{"task"'):])  # after the progress bar (stderr)
    assert scores["images"] == len(single_object_images(world)) > 0 and scores["chance"] == pytest.approx(1 / 8)


def test_long_texts_are_truncated_like_clip_tokenizer(hf_folder):
    from transformers import CLIPTokenizer

    folder, reference = hf_folder
    model = load_clip_folder(folder)
    long = [" ".join(["red circle"] * 20), "a blue square"]
    hf_tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    theirs = hf_tok(long, padding=True, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    ids = model.tokenize(long)
    assert ids.shape == (2, 16) and torch.equal(ids, theirs) and ids[0, -1] == model.text.eos_id
    with torch.no_grad():
        want = reference.get_text_features(input_ids=theirs)
        assert (model.encode_text(ids, normalize=False) - getattr(want, "pooler_output", want)).abs().max() < TOL
