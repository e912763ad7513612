"""Transformer parts: the one-mask rule, causality, the KV-cached caption decoder, the ViT encoder."""

from __future__ import annotations

import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.generate import GenerationConfig
from polymodal.models.captioner import Captioner
from polymodal.nn.decoders import build_decoder
from polymodal.nn.encoders import build_encoder
from polymodal.nn.transformer import Attention, TransformerLM, attention_mask
from polymodal.registry import DECODERS, ENCODERS
from polymodal.text.tokenizer import WordTokenizer

from .conftest import CAPTIONS


def _decoder(seed: int = 0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(name="transformer", hidden_dim=32, num_layers=2, num_heads=4, dropout=0.0)
    return build_decoder(cfg, feature_dim=12, vocab_size=20).eval()


def test_new_components_are_registered():
    assert "transformer" in DECODERS and "vit_tiny" in ENCODERS


def test_vit_tiny_shapes_gradients_and_freezing():
    enc = build_encoder(EncoderConfig(name="vit_tiny", width=8, grid=2))
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats = enc(images)
    assert feats.shape == (2, 4, enc.out_dim) and enc.out_dim == 32
    feats.sum().backward()
    assert images.grad.abs().sum() > 0
    assert enc(torch.randn(1, 3, 48, 48)).shape == (1, 4, 32)  # any size: the 2D positions are computed
    partial = build_encoder(EncoderConfig(name="vit_tiny", width=8, fine_tune_last_n=2))
    trainable = [any(p.requires_grad for p in s.parameters()) for s in partial.stages]
    assert trainable == [False] * (len(trainable) - 2) + [True, True]


def test_decoder_teacher_forcing_equals_kv_cached_steps():
    dec = _decoder()
    feats, tokens = torch.randn(3, 9, 12), torch.randint(1, 20, (3, 7))
    logits, aux = dec(feats, tokens)
    assert logits.shape == (3, 7, 20) and aux["losses"] == {}
    state = dec.init_state(feats)
    for t in range(7):
        step_logits, state, _ = dec.step(tokens[:, t], state)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5), t
    assert state["k0"].shape == (3, 4, 7, 8)  # (B, H, T, d): batch first, so beam search can reorder it
    logits.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_no_future_leakage():
    """Changing token t+1.. must not change the logits at positions <= t."""
    dec = _decoder()
    feats, tokens = torch.randn(2, 9, 12), torch.randint(1, 20, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = torch.randint(1, 20, (2, 3))
    a, _ = dec(feats, tokens)
    b, _ = dec(feats, changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_attention_mask_is_causal_and_masks_padding_without_nan():
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = attention_mask(valid, 4)[:, 0]
    assert mask.shape == (2, 4, 4)
    assert not mask[1].triu(1).any()  # nothing after the query
    assert mask[0, 3].tolist() == [False, False, True, True]  # padding keys hidden from real queries
    assert mask[0, 0].tolist() == [True, False, False, False]  # a padding query sees itself: no NaN rows
    lm = TransformerLM(10, 16, 1, 2, 8, 0.0).eval()
    x = torch.randn(2, 4, 16)
    hidden, _ = lm(x, mask=attention_mask(valid, 4))
    assert torch.isfinite(hidden).all()
    # Padding at the front changes nothing for the real tokens (positions given by the caller).
    alone, _ = lm(x[:1, 2:], is_causal=True)
    assert torch.allclose(hidden[0, 2:], alone[0], atol=1e-6)


def test_one_mask_rule():
    attn = Attention(16, 2, 0.0)
    with pytest.raises(ValueError, match="one mask"):
        attn(torch.randn(1, 3, 16), mask=torch.ones(1, 1, 3, 3, dtype=torch.bool), is_causal=True)


def test_transformer_captioner_beam_search_and_round_trip(tmp_path):
    from polymodal import load

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(name="transformer", hidden_dim=32, num_heads=4, max_len=8))
    model = Captioner(cfg, WordTokenizer.build(CAPTIONS)).eval()
    images = torch.randn(2, 3, 32, 32)
    beam = model.generate(images, GenerationConfig(strategy="beam", beam_size=3, num_return_sequences=3))
    assert [len(h) for h in beam] == [3, 3] and beam[0][0].score >= beam[0][-1].score
    # The batched beam (KV cache rows reordered by index_select) equals one image at a time.
    alone = model.generate(images[1:], GenerationConfig(strategy="beam", beam_size=3))
    assert alone[0][0].tokens == beam[1][0].tokens
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    assert again.generate(images, GenerationConfig(strategy="greedy"))[0][0].tokens == \
        model.generate(images, GenerationConfig(strategy="greedy"))[0][0].tokens


def test_attention_after_a_prefix_equals_attention_over_the_concatenation():
    from polymodal.nn.transformer import attend_after_prefix

    torch.manual_seed(0)
    q = torch.randn(3, 2, 1, 4)
    prefix = (torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4))
    rest = (torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4))
    valid = torch.tensor([[True] * 5, [False, True, True, True, True], [False, False, True, True, True]])
    got = attend_after_prefix(q, prefix, valid[:, None, None, :], rest)
    full_mask = torch.cat([valid, torch.ones(3, 2, dtype=torch.bool)], dim=1)[:, None, None, :]
    want = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([prefix[0], rest[0]], 2), torch.cat([prefix[1], rest[1]], 2), attn_mask=full_mask)
    torch.testing.assert_close(got, want)


def test_attention_dropout_is_its_own_knob_and_defaults_to_dropout():
    """attention_dropout=0 keeps the residual and MLP dropout but drops no attention weights (so a CPU can use the
    fused kernel): in training, two passes then differ only through the other dropouts, and with those at 0 too
    the LM is deterministic; None keeps the old behaviour (the weights dropped at `dropout`)."""
    lm = TransformerLM(20, 32, 2, 4, 16, dropout=0.1, attention_dropout=0.0).train()
    attention = [m for m in lm.modules() if isinstance(m, Attention)]
    others = [m for m in lm.modules() if isinstance(m, torch.nn.Dropout)]
    assert [a.dropout for a in attention] == [0.0, 0.0] and others and all(d.p == 0.1 for d in others)
    assert [a.dropout for a in TransformerLM(20, 32, 2, 4, 16, dropout=0.1).modules() if isinstance(a, Attention)] \
        == [0.1, 0.1]
    for d in others:
        d.p = 0.0
    x = torch.randn(2, 5, 32)
    assert torch.equal(lm(x, is_causal=True)[0], lm(x, is_causal=True)[0])
    cfg = ModelConfig(decoder=DecoderConfig(hidden_dim=32, num_layers=2, num_heads=4, attention_dropout=0.0))
    assert cfg.decoder.attention_dropout == 0.0 and DecoderConfig().attention_dropout is None
