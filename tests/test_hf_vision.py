"""ViT / SigLIP towers from local folders (nn/hf_vision.py) against `transformers`, frozen or fine-tuned,
and the nanoVLM recipe end to end: Llama LM + SigLIP tower from folders -> train -> save -> load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import polymodal
from polymodal.config import EncoderConfig, ModelConfig, load_config
from polymodal.data.images import IMAGENET_MEAN, IMAGENET_STD
from polymodal.models.prefix_lm import PrefixConfig, PrefixLM
from polymodal.nn.encoders import build_encoder
from polymodal.nn.hf_vision import HFVisionEncoder, read_vision_config
from polymodal.nn.llama import LlamaLM, read_llama_config
from polymodal.text.hf_tokenizer import HFTokenizer

from .conftest import CAPTIONS, one_line_error
from .test_llama import write_llama

transformers = pytest.importorskip("transformers")
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "image_size": 32, "patch_size": 8}


def write_tower(folder, kind: str, seed: int = 0):
    """A tiny random tower saved by transformers: ViTModel, SiglipVisionModel, or a whole SiglipModel."""
    torch.manual_seed(seed)
    if kind == "vit":
        hf = transformers.ViTModel(transformers.ViTConfig(**SIZES))
    elif kind == "siglip":
        hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIZES))
    else:
        text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64,
                "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
        hf = transformers.SiglipModel(transformers.SiglipConfig(vision_config=SIZES, text_config=text))
    with torch.no_grad():  # the class token and positions start at zero or near it: make them count
        for name, p in hf.named_parameters():
            if "position" in name or "cls_token" in name:
                p.normal_(0.0, 1.0)
    hf.save_pretrained(folder, safe_serialization=True)
    return hf.eval() if kind != "siglip_full" else hf.vision_model.eval()


@pytest.mark.parametrize("kind", ["vit", "siglip", "siglip_full"])
def test_last_hidden_state_matches_transformers(tmp_path, kind):
    hf = write_tower(tmp_path / kind, kind)
    tower = build_encoder(EncoderConfig(name="hf_vision", pretrained=str(tmp_path / kind))).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = tower.hidden_states(pixels), hf(pixel_values=pixels).last_hidden_state
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-5
        # Other image sizes: positions resized as HF's interpolate_pos_encoding does.
        big = torch.randn(1, 3, 48, 48)
        assert (tower.hidden_states(big) - hf(pixel_values=big, interpolate_pos_encoding=True).last_hidden_state
                ).abs().max() < 1e-5
        # Regions for the projector: ImageNet-normalized images in, the patch tokens out (no class token).
        raw = torch.rand(2, 3, 32, 32)
        imagenet = (raw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        regions = tower(imagenet)
        expected = hf(pixel_values=(raw - 0.5) / 0.5).last_hidden_state[:, int(kind == "vit"):]
    assert regions.shape == (2, 16, 32) and (regions - expected).abs().max() < 1e-5


def test_frozen_and_fine_tuned_towers(tmp_path):
    write_tower(tmp_path / "siglip", "siglip")
    frozen = HFVisionEncoder(EncoderConfig(name="hf_vision", pretrained=str(tmp_path / "siglip"), freeze=True))
    assert not any(p.requires_grad for p in frozen.parameters())
    last = HFVisionEncoder(EncoderConfig(name="hf_vision", pretrained=str(tmp_path / "siglip"), fine_tune_last_n=2))
    trainable = [name for name, p in last.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith(("stages.2.", "stages.3.")) for name in trainable)  # last block + norm


def test_bad_tower_folders_are_one_line_errors(tmp_path):
    folder = tmp_path / "vit"
    write_tower(folder, "vit")
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    build = lambda: HFVisionEncoder(EncoderConfig(name="hf_vision", pretrained=str(folder)))  # noqa: E731

    assert "config.json: not found" in one_line_error(lambda: read_vision_config(tmp_path / "nowhere"))
    save_file({k: v for k, v in tensors.items() if k != "encoder.layer.1.output.dense.bias"}, str(weights))
    message = one_line_error(build)
    assert str(weights) in message and "missing ['encoder.layer.1.output.dense.bias']" in message
    save_file({**tensors, "encoder.layer.7.output.dense.bias": torch.zeros(32)}, str(weights))
    assert "unexpected ['encoder.layer.7.output.dense.bias']" in one_line_error(build)
    save_file({**tensors, "layernorm.weight": torch.ones(33)}, str(weights))
    assert "shape mismatch ['layernorm.weight (33,) vs (32,)']" in one_line_error(build)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "model_type='bert' is not a vision tower" in one_line_error(build)


# ---- the nanoVLM recipe ---------------------------------------------------------------------------
def test_llama_and_siglip_prefix_lm_trains_saves_and_reloads(tmp_path):
    from polymodal.train.prefix_lm import PrefixLMExperimentConfig, train_prefix_lm

    # A SmolLM2-layout folder: config.json + model.safetensors + the LM's own Hugging Face tokenizer.json.
    tokenizer = toy_smollm_tokenizer()
    write_llama(tmp_path / "llama", vocab=len(tokenizer), tie=True)
    tokenizer.hf.save(str(tmp_path / "llama" / "tokenizer.json"))
    write_tower(tmp_path / "siglip", "siglip")
    reference_lm = LlamaLM(read_llama_config(tmp_path / "llama"))
    tower = HFVisionEncoder(EncoderConfig(name="hf_vision", pretrained=str(tmp_path / "siglip")))

    # 1. Directly: 2 AdamW steps on both folders, save_pretrained, polymodal.load -> identical logits.
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="hf_vision", pretrained=str(tmp_path / "siglip"),
                                                           freeze=True))
    model = PrefixLM(cfg, tokenizer, PrefixConfig(lm=read_llama_config(tmp_path / "llama")))
    model.load_lm(tmp_path / "llama")
    projector_before = model.projector.net[0].weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(2, 3, 32, 32)
    batch = {"images": images, "tokens": torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])}
    for _ in range(2):
        loss = model(batch)[1]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.projector.net[0].weight, projector_before)  # the projector trains
    assert torch.equal(model.encoder.stages[1].q.weight, tower.stages[1].q.weight)  # the frozen tower does not
    model.eval().save_pretrained(tmp_path / "saved")

    # 2. The training task: init_lm_from the Llama folder, the SigLIP folder as encoder, 2 steps, saved.
    overrides = ["task=prefix_lm", f"init_lm_from={tmp_path / 'llama'}", "model.encoder.name=hf_vision",
                 f"model.encoder.pretrained={tmp_path / 'siglip'}", "model.encoder.fine_tune_last_n=1",
                 "model.image_size=32", "data.n=40", "data.render_size=32", "train.batch_size=4", "train.steps=2",
                 "train.eval_every=0", "train.checkpoint_every=0", "train.warmup_steps=1",
                 f"train.out_dir={tmp_path / 'run'}"]
    summary = train_prefix_lm(load_config(None, overrides, PrefixLMExperimentConfig), progress=False)
    assert summary["step"] == 2

    shutil.rmtree(tmp_path / "llama")  # the saved models need neither folder any more
    shutil.rmtree(tmp_path / "siglip")
    loaded = polymodal.load(tmp_path / "saved")
    assert isinstance(loaded.lm, LlamaLM) and isinstance(loaded.encoder, HFVisionEncoder)
    with torch.no_grad():
        assert torch.equal(loaded(batch)[0], model(batch)[0])
    assert [h.tokens for h in loaded.generate(images)[0]] == [h.tokens for h in model.generate(images)[0]]
    trained = polymodal.load(tmp_path / "run")
    assert isinstance(trained.lm, LlamaLM) and trained.prefix_cfg.vision.kind == "siglip"
    assert trained.lm.dims == reference_lm.dims
    assert torch.equal(trained.encoder.stages[1].q.weight, tower.stages[1].q.weight)  # only the last stage trained
    assert not torch.equal(trained.encoder.stages[-1].weight, tower.stages[-1].weight)
    assert isinstance(trained.tokenizer, HFTokenizer) and trained.tokenizer.to_dict() == tokenizer.to_dict()
    assert isinstance(trained.caption([torch.rand(3, 32, 32)])[0], str)


def toy_smollm_tokenizer() -> HFTokenizer:
    """A byte-level BPE trained on the test captions, with SmolLM2's first special tokens at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]
    hf.train_from_iterator(CAPTIONS * 3, trainers.BpeTrainer(special_tokens=specials, vocab_size=300, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return HFTokenizer(hf)


def test_a_vocabulary_without_specials_at_0_to_2_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    hf = Tokenizer(models.WordLevel({"!": 0, "a": 1, "b": 2, "<|endoftext|>": 3}, unk_token="<|endoftext|>"))
    hf.save(str(tmp_path / "tokenizer.json"))
    message = one_line_error(lambda: HFTokenizer.from_file(tmp_path / "tokenizer.json"))
    assert "ids 0-2 must be special tokens" in message and "pad='!'" in message
