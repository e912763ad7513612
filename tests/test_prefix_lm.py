"""The image-prefix LM: KV cache = full recomputation, padded prefill, causality, GPT-2 folders, LM-first training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import polymodal
from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.errors import CheckpointError
from polymodal.generate import GenerationConfig
from polymodal.models.prefix_lm import PrefixConfig, PrefixLM
from polymodal.nn.gpt2 import read_gpt2_config
from polymodal.nn.projector import pixel_shuffle
from polymodal.text.tokenizer import WordTokenizer

from .conftest import CAPTIONS, assert_cache_matches_recompute


def _model(seed: int = 0, layers: int = 2, encoder: str = "small_cnn", bidirectional: bool = False) -> PrefixLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name=encoder, width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=layers, num_heads=4, dropout=0.0, max_len=12))
    prefix = PrefixConfig(pixel_shuffle=2, bidirectional_prefix=bidirectional)
    model = PrefixLM(cfg, WordTokenizer.build(CAPTIONS), prefix).eval().double()
    with torch.no_grad():  # GPT-2's 0.02 init gives near-uniform logits; spread them so that decoding varies
        model.lm.wte.weight.normal_(0.0, 1.0)
        model.lm.wpe.weight.normal_(0.0, 3.0)
    return model


def test_kv_cache_generation_gives_exactly_the_tokens_of_full_recomputation():
    model = _model()
    images = torch.randn(2, 3, 32, 32, dtype=torch.double)
    assert_cache_matches_recompute(model, images)
    tokens = [h[0].tokens for h in model.generate(images, GenerationConfig(strategy="greedy", min_len=10))]
    assert len({t for seq in tokens for t in seq}) > 2  # a real check, not a sequence of one repeated token


def test_padded_prefill_matches_each_row_alone():
    model = _model()
    images = torch.randn(3, 3, 32, 32, dtype=torch.double)
    prompts = [[5], [6, 7, 8], []]  # left-padded to 3 inside one batch
    state = model.init_state(images, prompts)
    assert state["valid"].shape == (3, 4 + 3)  # 4x4 regions -> 4 visual tokens, then the prompts and state["pos"].tolist() == [1, 3, 0]
    steps = [model.tokenizer.bos_id, 4, 9]
    batched = []
    for token in steps:
        logits, state, _ = model.step(torch.full((3,), token), state)
        batched.append(logits)
    for r, prompt in enumerate(prompts):
        alone = model.init_state(images[r:r + 1], [prompt])
        for t, token in enumerate(steps):
            logits, alone, _ = model.step(torch.tensor([token]), alone)
            assert torch.allclose(logits[0], batched[t][r], atol=1e-10), (r, t)


def test_causal_no_future_leakage_and_loss_on_text_only():
    model = _model()
    images = torch.randn(2, 3, 32, 32, dtype=torch.double)
    tokens = torch.randint(4, len(model.tokenizer), (2, 9))
    changed = tokens.clone()
    changed[:, 6:] = torch.randint(4, len(model.tokenizer), (2, 3))
    a, losses = model({"images": images, "tokens": tokens})
    b, _ = model({"images": images, "tokens": changed})
    assert a.shape == (2, 8, len(model.tokenizer))  # logits for the text positions only
    assert torch.allclose(a[:, :6], b[:, :6]) and not torch.allclose(a[:, 6:], b[:, 6:])
    expected = F.cross_entropy(a.reshape(-1, a.shape[-1]), tokens[:, 1:].reshape(-1))
    assert torch.allclose(losses["loss"], expected.float())
    # Text alone (task lm_pretrain) runs the same LM with no prefix.
    text_logits, _ = model({"tokens": tokens})
    assert text_logits.shape == a.shape and not torch.allclose(text_logits, a)


def test_bidirectional_prefix_reads_the_prompt_both_ways_and_decodes_as_it_trained():
    model = _model(bidirectional=True)
    images = torch.randn(2, 3, 32, 32, dtype=torch.double)
    tokens = torch.randint(4, len(model.tokenizer), (2, 9))
    prompt_len = torch.tensor([4, 2])
    logits, _ = model({"images": images, "tokens": tokens, "prefix_len": prompt_len})
    later = tokens.clone()
    later[0, 3] = (later[0, 3] + 1 - 4) % (len(model.tokenizer) - 4) + 4  # a prompt word: earlier positions see it
    changed, _ = model({"images": images, "tokens": later, "prefix_len": prompt_len})
    assert not torch.allclose(changed[0, :3], logits[0, :3]) and torch.allclose(changed[1], logits[1])
    reply = tokens.clone()
    reply[:, 6:] = 4  # reply words stay causal: nothing before them changes
    after, _ = model({"images": images, "tokens": reply, "prefix_len": prompt_len})
    assert torch.allclose(after[:, :6], logits[:, :6])
    prompts = [tokens[r, :n].tolist() for r, n in enumerate(prompt_len.tolist())]  # left-padded in one batch
    state = model.init_state(images, prompts)
    for t in range(3):  # the cached prefill and steps give the training logits of every reply position
        step_logits, state, _ = model.step(torch.stack([tokens[r, n + t] for r, n in enumerate(prompt_len)]), state)
        for r, n in enumerate(prompt_len.tolist()):
            assert torch.allclose(step_logits[r], logits[r, n + t], atol=1e-10), (r, t)
    assert_cache_matches_recompute(model, images)  # no prompt: the visual tokens read each other both ways


def test_pixel_shuffle_merges_2x2_neighbours():
    grid = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid, value = region index
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]


def test_save_load_round_trip_and_user_api(tmp_path):
    from polymodal import load

    model = _model(encoder="vit_tiny").float()
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    assert type(again) is PrefixLM and again.prefix_cfg == model.prefix_cfg
    image = torch.rand(3, 40, 40)
    assert again.caption([image], strategy="greedy") == model.caption([image], strategy="greedy")
    assert len(again.caption_nbest([image], beam_size=3, num_return_sequences=2)[0]) == 2


# ---- GPT-2-format folders ----------------------------------------------------------------------
def _write_gpt2(folder, vocab: int, dim: int = 32, layers: int = 2, heads: int = 4, positions: int = 32,
                prefix: str = "") -> dict[str, torch.Tensor]:
    """A random GPT-2 in Hugging Face's format: Conv1D weights (in, out), causal-mask buffers."""
    g = torch.Generator().manual_seed(1)
    t = {f"{prefix}wte.weight": torch.randn(vocab, dim, generator=g) * 0.5,
         f"{prefix}wpe.weight": torch.randn(positions, dim, generator=g) * 0.1,
         f"{prefix}ln_f.weight": 1 + 0.1 * torch.randn(dim, generator=g), f"{prefix}ln_f.bias": 0.1 * torch.randn(dim, generator=g)}
    shapes = {"attn.c_attn": (dim, 3 * dim), "attn.c_proj": (dim, dim), "mlp.c_fc": (dim, 4 * dim), "mlp.c_proj": (4 * dim, dim)}
    for i in range(layers):
        for name, (fan_in, fan_out) in shapes.items():
            t[f"{prefix}h.{i}.{name}.weight"] = torch.randn(fan_in, fan_out, generator=g) * 0.2
            t[f"{prefix}h.{i}.{name}.bias"] = 0.1 * torch.randn(fan_out, generator=g)
        for ln in ("ln_1", "ln_2"):
            t[f"{prefix}h.{i}.{ln}.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
            t[f"{prefix}h.{i}.{ln}.bias"] = 0.1 * torch.randn(dim, generator=g)
        t[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": vocab, "n_embd": dim, "n_layer": layers, "n_head": heads,
        "n_positions": positions, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
    return {k.removeprefix(prefix): v for k, v in t.items()}


def _gpt2_reference(t: dict[str, torch.Tensor], ids: torch.Tensor, layers: int, heads: int) -> torch.Tensor:
    """GPT-2's forward written out from the paper/HF code, straight from the HF tensors."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], t[f"{name}.weight"], t[f"{name}.bias"], 1e-5)

    def conv1d(x, name):  # HF Conv1D: x @ W + b with W (in, out)
        return x @ t[f"{name}.weight"] + t[f"{name}.bias"]

    n = ids.shape[1]
    x = t["wte.weight"][ids] + t["wpe.weight"][:n]
    for i in range(layers):
        q, k, v = conv1d(ln(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").chunk(3, dim=-1)
        q, k, v = (z.view(1, n, heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, n, -1)
        x = x + conv1d(attn, f"h.{i}.attn.c_proj")
        h = conv1d(ln(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")
        h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))  # gelu_new
        x = x + conv1d(h, f"h.{i}.mlp.c_proj")
    return ln(x, "ln_f") @ t["wte.weight"].T


def _prefix_from_gpt2(folder, tokenizer) -> PrefixLM:
    dims = read_gpt2_config(folder)
    decoder = DecoderConfig(hidden_dim=dims["hidden_dim"], num_layers=dims["num_layers"],
                            num_heads=dims["num_heads"], max_positions=dims["max_positions"], dropout=0.0)
    return PrefixLM(ModelConfig(image_size=32, encoder=EncoderConfig(width=8), decoder=decoder), tokenizer).eval()


@pytest.mark.parametrize("prefix", ["", "transformer."])  # GPT2Model and GPT2LMHeadModel key names
def test_gpt2_folder_reproduces_its_logits(tmp_path, prefix):
    tokenizer = WordTokenizer.build(CAPTIONS)
    tensors = _write_gpt2(tmp_path / "gpt2", len(tokenizer), prefix=prefix)
    model = _prefix_from_gpt2(tmp_path / "gpt2", tokenizer)
    report = model.load_lm(tmp_path / "gpt2")
    assert report.loaded == 4 + 12 * 2 and not report.missing and not report.unexpected
    assert sorted(report.ignored) == ["h.0.attn.bias", "h.1.attn.bias"]
    ids = torch.tensor([[1, 5, 9, 4, 12, 7, 2]])
    with torch.no_grad():
        logits, _ = model({"tokens": torch.cat([ids, ids[:, :1]], 1)})  # text-only teacher forcing
    assert torch.allclose(logits[0], _gpt2_reference(tensors, ids, 2, 4)[0], atol=1e-4)


def test_gpt2_mismatches_are_reported(tmp_path):
    tokenizer = WordTokenizer.build(CAPTIONS)
    tensors = _write_gpt2(tmp_path / "gpt2", len(tokenizer))
    tensors.pop("h.1.mlp.c_fc.bias")
    tensors["h.0.attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "gpt2" / "model.safetensors"))
    model = _prefix_from_gpt2(tmp_path / "gpt2", tokenizer)
    with pytest.raises(CheckpointError, match=r"missing \['h.1.mlp.c_fc.bias'\].*unexpected \['h.0.attn.extra"):
        model.load_lm(tmp_path / "gpt2")
    small = PrefixLM(ModelConfig(encoder=EncoderConfig(width=8), decoder=DecoderConfig(hidden_dim=16)), tokenizer)
    _write_gpt2(tmp_path / "ok", len(tokenizer))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        small.load_lm(tmp_path / "ok")


def test_gpt2_folder_matches_transformers(tmp_path):
    import transformers  # the dev extra installs it: the parity check must run, not skip
    tokenizer = WordTokenizer.build(CAPTIONS)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    hf.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    model = _prefix_from_gpt2(tmp_path / "gpt2", tokenizer)
    model.load_lm(tmp_path / "gpt2")
    ids = torch.tensor([[1, 5, 9, 4, 12, 7, 2]])
    with torch.no_grad():
        ours, _ = model({"tokens": torch.cat([ids, ids[:, :1]], 1)})
        theirs = hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


# ---- LM first, then vision ------------------------------------------------------------------------
def test_lm_pretrain_then_prefix_lm_starts_from_the_pretrained_lm(tmp_path, monkeypatch):
    from polymodal.config import load_config
    from polymodal.models.prefix_lm import PrefixLM as Model
    from polymodal.train.lm_pretrain import LMPretrainConfig, train_lm
    from polymodal.train.prefix_lm import PrefixLMExperimentConfig, train_prefix_lm

    common = ["data.n=40", "data.render_size=32", "model.image_size=32", "model.encoder.width=8",
              "model.decoder.hidden_dim=32", "model.decoder.num_heads=4", "train.batch_size=8",
              "train.eval_every=0", "train.checkpoint_every=0", "train.warmup_steps=1"]
    lm_cfg = load_config(None, common + [f"train.out_dir={tmp_path / 'lm'}", "train.steps=3", "task=lm_pretrain",
                                         "model.tokenizer=bpe", "model.bpe_vocab_size=300"], LMPretrainConfig)
    train_lm(lm_cfg, progress=False)
    pretrained = PrefixLM.from_pretrained(tmp_path / "lm")
    seen = {}
    original = Model.load_lm

    def spy(self, source):  # capture the LM right after initialisation, before any multimodal step
        out = original(self, source)
        seen["wte"] = self.lm.wte.weight.detach().clone()
        return out

    monkeypatch.setattr(Model, "load_lm", spy)
    cfg = load_config(None, common + [f"train.out_dir={tmp_path / 'vl'}", "train.steps=2", "task=prefix_lm",
                                      f"init_lm_from={tmp_path / 'lm'}", "model.decoder.hidden_dim=64"],
                      PrefixLMExperimentConfig)
    summary = train_prefix_lm(cfg, progress=False)
    assert torch.equal(seen["wte"], pretrained.lm.wte.weight)  # sizes and tokenizer came from the LM run
    final = PrefixLM.from_pretrained(tmp_path / "vl")
    assert final.cfg.decoder.hidden_dim == 32 and final.tokenizer.to_dict()["type"] == "bpe"
    assert summary["step"] == 2
    loaded = polymodal.load(tmp_path / "vl")  # training saved the best model's OOD statistics beside it
    assert loaded.ood_stats is not None and loaded.ood_stats.threshold == pytest.approx(summary["ood_threshold"])


def test_rows_joining_a_running_beam_batch_match_each_row_alone():
    """Continuous batching with KV caches: rows that join later (other prompt lengths too) have padded,
    masked caches, and end exactly as when decoded alone."""
    model = _model()
    images = torch.randn(4, 3, 32, 32, dtype=torch.double)
    prompts = [[5], [6, 7, 8], [], [9, 9]]
    cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=10, num_return_sequences=2)
    alone = [model.generate(images[i:i + 1], cfg, prompts=[prompts[i]])[0] for i in range(4)]
    joins = {0: [0], 2: [1, 2], 3: [3]}
    beams, ended = model.beam_batch(cfg), {}
    with torch.inference_mode():
        for step in range(30):
            if step in joins:
                beams.add(model.init_state(images[joins[step]], [prompts[i] for i in joins[step]]), joins[step])
            if beams:
                ended.update(beams.advance())
            if step == 3:
                assert "gvalid" in beams.state and not bool(beams.state["gvalid"].all())
    assert sorted(ended) == [0, 1, 2, 3]
    for i in range(4):
        assert [h.tokens for h in ended[i]] == [h.tokens for h in alone[i]]
        assert [h.score for h in ended[i]] == pytest.approx([h.score for h in alone[i]], abs=1e-9)


def test_attention_maps_over_the_visual_tokens_explain_without_changing_the_output():
    """return_attention gives one distribution over the visual tokens per generated token, computed by hand
    from the first layer's query and keys for the first step, and the same tokens as without it."""
    model = _model()
    images = torch.randn(2, 3, 32, 32, dtype=torch.double)
    for cfg in (GenerationConfig(strategy="greedy", max_len=6, min_len=6),
                GenerationConfig(strategy="beam", beam_size=3, max_len=6)):
        plain = model.generate(images, cfg)
        explained = model.generate(images, GenerationConfig(**{**cfg.__dict__, "return_attention": True}))
        assert [h[0].tokens for h in plain] == [h[0].tokens for h in explained]
        for per in explained:
            att = per[0].attention
            assert att.shape == (len(per[0].tokens) + (len(per[0].tokens) < 6), 4)  # 8x8 regions -> 2x2 tokens
            assert torch.allclose(att.sum(-1), torch.ones(att.shape[0], dtype=att.dtype), atol=1e-5)
    assert all(b.attn.query is None and not b.attn.keep_query for b in model.lm.h)  # nothing kept afterwards
    # By hand, the first step of one image with a one-layer model: softmax(q k^T / sqrt(d)) over the visual keys.
    one = _model(layers=1)
    state = one.init_state(images[:1])
    one.lm.h[0].attn.keep_query = True
    _, _, att = one.step(torch.tensor([one.tokenizer.bos_id]), state)
    q, k = one.lm.h[0].attn.query[:, :, -1:], state["pk0"]
    expected = (q @ k.transpose(-1, -2) / (k.shape[-1] ** 0.5)).softmax(-1).mean(1)[:, 0]
    assert torch.allclose(att.double(), expected, atol=1e-6)


def test_attention_dropout_is_saved_with_the_model(tmp_path):
    """A prefix LM trained without attention dropout (configs/assistant.yaml) reloads, and goes on training, so."""
    from polymodal.nn.transformer import Attention

    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
                      decoder=DecoderConfig(hidden_dim=32, num_layers=2, num_heads=4, dropout=0.1,
                                            attention_dropout=0.0))
    PrefixLM(cfg, WordTokenizer.build(CAPTIONS), PrefixConfig(pixel_shuffle=2)).save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["model"]["decoder"]
    reloaded = polymodal.load(tmp_path / "m")
    assert saved["attention_dropout"] == 0.0 and saved["dropout"] == 0.1
    assert {m.dropout for m in reloaded.modules() if isinstance(m, Attention)} == {0.0}
