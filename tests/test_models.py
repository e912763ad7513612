"""Every registered encoder and decoder: shapes, gradients, pretrained loading, freezing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from polymodal.config import DecoderConfig, EncoderConfig
from polymodal.errors import CheckpointError
from polymodal.nn.decoders import build_decoder
from polymodal.nn.encoders import build_encoder
from polymodal.registry import DECODERS, ENCODERS


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_shapes_and_gradients(name):
    enc = build_encoder(EncoderConfig(name=name, width=8, grid=2))
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats = enc(images)
    assert feats.shape == (2, 4, enc.out_dim)
    feats.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("name", DECODERS.names())
def test_decoder_teacher_forcing_matches_stepping(name):
    torch.manual_seed(0)
    dec = build_decoder(DecoderConfig(name=name, embed_dim=8, hidden_dim=16, attention_dim=8, feature_dim=8,
                                      dropout=0.0), feature_dim=12, vocab_size=20).eval()
    feats, tokens = torch.randn(3, 5, 12), torch.randint(1, 20, (3, 6))
    logits, aux = dec(feats, tokens)
    assert logits.shape == (3, 6, 20)
    state = dec.init_state(feats)
    for t in range(6):  # the fast full-sequence path and the step path are the same function
        step_logits, state, _ = dec.step(tokens[:, t], state)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5)
    total = logits.sum() + sum(aux["losses"].values(), torch.tensor(0.0))
    total.backward()
    assert all(p.grad is not None for p in dec.parameters() if p.requires_grad and p.dim() > 1)


def test_resnet_loads_a_local_torchvision_file(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    enc = build_encoder(EncoderConfig(name="resnet18", pretrained=str(path)))
    assert torch.equal(enc.stages[0][0].weight, reference.conv1.weight)
    assert torch.equal(enc.stages[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    save_file(reference.state_dict(), str(tmp_path / "resnet18.safetensors"))
    enc2 = build_encoder(EncoderConfig(name="resnet18", pretrained=str(tmp_path / "resnet18.safetensors")))
    assert torch.equal(enc2.stages[0][0].weight, reference.conv1.weight)


def test_wrong_or_unsafe_weight_files_are_refused(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match="unexpected keys|missing"):
        build_encoder(EncoderConfig(name="resnet18", pretrained=str(tmp_path / "r34.pth")))
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        build_encoder(EncoderConfig(name="resnet18", pretrained=str(tmp_path / "evil.pth")))
    with pytest.raises(CheckpointError, match="neither a local weight file"):
        build_encoder(EncoderConfig(name="resnet18", pretrained="NOT_A_WEIGHTS_NAME"))


def test_freeze_and_fine_tune_last_n():
    frozen = build_encoder(EncoderConfig(name="resnet18", freeze=True))
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.stages[0][1].training  # frozen BatchNorm keeps its statistics
    partial = build_encoder(EncoderConfig(name="resnet18", fine_tune_last_n=1))
    assert all(p.requires_grad for p in partial.stages[4].parameters())
    assert not any(p.requires_grad for p in partial.stages[3].parameters())


def test_seed_model_dimensions_are_the_seed_systems():
    dec = build_decoder(DecoderConfig(name="seed_lstm"), feature_dim=512, vocab_size=10000)
    assert dec.image_proj.in_features == 512 and dec.image_proj.out_features == 128
    assert dec.embed.embedding_dim == 256 and dec.lstm.hidden_size == 512
