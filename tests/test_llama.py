"""The Llama-family LM (nn/llama.py) against `transformers`, with and without the KV cache, inside the
prefix LM (cached = uncached generation), and the one-line errors for folders that do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.errors import ConfigError
from polymodal.generate import GenerationConfig
from polymodal.models.prefix_lm import PrefixConfig, PrefixLM
from polymodal.nn.llama import LlamaLM, is_llama_folder, load_llama, read_llama_config
from polymodal.text.tokenizer import WordTokenizer

from .conftest import CAPTIONS, assert_cache_matches_recompute, one_line_error

transformers = pytest.importorskip("transformers")


def write_llama(folder, vocab: int = 64, tie: bool = True, seed: int = 0, tokenizer=None, spread: float = 0.3,
                embed: float = 1.0):
    """A tiny random LlamaForCausalLM saved by transformers itself (safetensors): hidden 32, 2 layers,
    4 heads, 2 key/value heads (grouped-query attention); matrices drawn with std `spread`, embeddings `embed`."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                   tie_word_embeddings=tie, rms_norm_eps=1e-6)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # spread the 0.02 init so that logits differ clearly and greedy decoding varies
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, embed if p.shape[0] == vocab else spread)
    hf.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    return hf


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers_with_and_without_the_cache(tmp_path, tie):
    hf = write_llama(tmp_path / "llama", tie=tie, spread=0.1, embed=0.2)  # logits of std ~1: 1e-5 is tight
    assert is_llama_folder(tmp_path / "llama")
    lm = LlamaLM(read_llama_config(tmp_path / "llama")).eval()
    assert load_llama(lm, tmp_path / "llama") == 2 + 9 * 2 + (not tie)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(ids).logits
        hidden, _ = lm(lm.embed(ids), is_causal=True)
        full = lm.logits(hidden)
        cache, steps = None, []
        for t in range(ids.shape[1]):  # one token at a time against the growing cache
            hidden, cache = lm(lm.embed(ids[:, t:t + 1]), cache=cache, positions=torch.tensor([t]))
            steps.append(lm.logits(hidden))
    assert (full - reference).abs().max() < 1e-5
    assert (torch.cat(steps, 1) - reference).abs().max() < 1e-5
    assert cache["k0"].shape == (2, 2, 11, 8)  # the cache holds the 2 key/value heads only
    assert reference.std() > 0.5  # a real comparison, not of near-constant logits


def test_prefix_lm_text_alone_gives_the_llama_logits(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    hf = write_llama(tmp_path / "llama", vocab=len(tokenizer), tie=False)
    model = _prefix_llama(tmp_path / "llama", tokenizer)
    tokens = torch.tensor([[tokenizer.bos_id, 5, 6, 7, 8, tokenizer.eos_id]])
    logits, _ = model({"tokens": tokens})  # no images: the LM alone, text at positions 0, 1, ...
    assert (logits - hf(tokens[:, :-1]).logits).abs().max() < 1e-5


def _prefix_llama(folder, tokenizer, dtype=torch.float32) -> PrefixLM:
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(dropout=0.0, max_len=12))
    model = PrefixLM(cfg, tokenizer, PrefixConfig(pixel_shuffle=2, lm=read_llama_config(folder)))
    model.load_lm(folder)
    return model.eval().to(dtype)


def test_prefix_lm_with_llama_cached_generation_gives_the_uncached_tokens(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    write_llama(tmp_path / "llama", vocab=len(tokenizer), tie=False)  # tied random weights repeat one token
    model = _prefix_llama(tmp_path / "llama", tokenizer, torch.double)
    images = torch.randn(2, 3, 32, 32, dtype=torch.double)
    assert_cache_matches_recompute(model, images)
    tokens = model.generate(images, GenerationConfig(strategy="greedy", max_len=10, min_len=10))[0][0].tokens
    assert len(set(tokens)) > 2  # a real check, not one repeated token
    prompts = [[5], [6, 7, 8]]  # left-padded prompts: the padding is masked, rotary positions skip it
    padded = model.generate(images, GenerationConfig(max_len=8), prompts=prompts)
    for r in range(2):
        alone = model.generate(images[r:r + 1], GenerationConfig(max_len=8), prompts=[prompts[r]])
        assert padded[r][0].tokens == alone[0][0].tokens
        assert padded[r][0].score == pytest.approx(alone[0][0].score, abs=1e-9)


def test_attention_maps_work_with_grouped_query_heads(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    write_llama(tmp_path / "llama", vocab=len(tokenizer), tie=False)
    model = _prefix_llama(tmp_path / "llama", tokenizer)
    hyp = model.generate(torch.randn(1, 3, 32, 32), GenerationConfig(max_len=5, min_len=5, return_attention=True))[0][0]
    assert hyp.attention.shape == (5, 4)  # per generated token, over the 4 visual tokens (4 query, 2 kv heads)
    assert torch.allclose(hyp.attention.sum(1), torch.ones(5), atol=1e-5)


def test_rows_joining_a_running_beam_batch_match_each_row_alone(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    write_llama(tmp_path / "llama", vocab=len(tokenizer), tie=False)  # tied random weights repeat one token
    model = _prefix_llama(tmp_path / "llama", tokenizer, torch.double)
    images = torch.randn(3, 3, 32, 32, dtype=torch.double)
    prompts = [[5], [6, 7, 8], []]
    cfg = GenerationConfig(strategy="beam", beam_size=2, max_len=8, num_return_sequences=2)
    alone = [model.generate(images[i:i + 1], cfg, prompts=[prompts[i]])[0] for i in range(3)]
    beams, ended = model.beam_batch(cfg), {}
    with torch.inference_mode():
        for step in range(25):
            if step in (0, 2):
                rows = [0] if step == 0 else [1, 2]
                beams.add(model.init_state(images[rows], [prompts[i] for i in rows]), rows)
            if beams:
                ended.update(beams.advance())
    assert sorted(ended) == [0, 1, 2]
    for i in range(3):
        assert [h.tokens for h in ended[i]] == [h.tokens for h in alone[i]]


# ---- folders that do not fit: one line naming the file and the key ------------------------------
def test_bad_llama_folders_are_one_line_errors(tmp_path):
    folder = tmp_path / "llama"
    write_llama(folder)
    dims = read_llama_config(folder)
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))

    assert "config.json: not found" in one_line_error(lambda: read_llama_config(tmp_path / "nowhere"))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "not a Llama-family model" in one_line_error(lambda: read_llama_config(gpt2))

    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(weights))
    message = one_line_error(lambda: load_llama(LlamaLM(dims), folder))
    assert str(weights) in message and "missing ['model.layers.1.mlp.up_proj.weight']" in message

    save_file({**tensors, "model.layers.2.mlp.up_proj.weight": torch.zeros(64, 32)}, str(weights))
    assert "unexpected ['model.layers.2.mlp.up_proj.weight']" in one_line_error(lambda: load_llama(LlamaLM(dims), folder))

    save_file({**tensors, "model.norm.weight": torch.ones(31)}, str(weights))
    message = one_line_error(lambda: load_llama(LlamaLM(dims), folder))
    assert "shape mismatch ['model.norm.weight (31,) vs (32,)']" in message

    save_file({**tensors, "lm_head.weight": torch.zeros(64, 32)}, str(weights))  # config.json says tied
    assert "lm_head.weight differs" in one_line_error(lambda: load_llama(LlamaLM(dims), folder))
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, str(weights))
    assert load_llama(LlamaLM(dims), folder) == 20  # a stored copy of the tied embedding is fine

    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    assert "found pytorch_model.bin" in one_line_error(lambda: load_llama(LlamaLM(dims), folder))

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "linear", "factor": 2}}))
    assert "rope_scaling" in one_line_error(lambda: read_llama_config(folder))


def test_a_llama_folder_needs_a_llama_prefix_lm(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    write_llama(tmp_path / "llama", vocab=len(tokenizer))
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_heads=4))
    with pytest.raises(ConfigError, match="prefix.lm = read_llama_config"):
        PrefixLM(cfg, tokenizer).load_lm(tmp_path / "llama")
    with pytest.raises(ConfigError, match="token embeddings"):
        PrefixLM(cfg, WordTokenizer.build(["a b"]), PrefixConfig(lm=read_llama_config(tmp_path / "llama")))
