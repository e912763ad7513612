"""A Llama-family causal LM (Llama, SmolLM2) and its loader from a local Hugging Face folder.

The layout (Touvron et al. 2023): RMSNorm before attention and MLP, rotary position embeddings
(Su et al. 2021, HF's "rotate half" convention), SwiGLU MLP `down(silu(gate(x)) * up(x))`,
grouped-query attention (`num_kv_heads` key/value heads shared by `num_heads / num_kv_heads`
query heads each), output tied to the token embedding or a separate `lm_head`.

`LlamaLM` has `TransformerLM`'s interface (`embed`, `forward(x, mask, is_causal, cache, prefix,
positions)`, `logits`, blocks in `h`), so the prefix LM drives either one. Positions are not
added to the embeddings: `forward` rotates queries and keys by `positions`, and the KV cache holds
the rotated keys with `num_kv_heads` heads (B, Hkv, T, d).

A folder (config.json + model.safetensors) comes in through an explicit key map checked both ways:
every file tensor must land somewhere (else "unexpected"), every LM tensor must be filled (else
"missing"), shapes must agree. Nothing is downloaded.

Example:
    A tiny folder, written here through the key map (SmolLM2-135M gives 272 tensors):

    >>> import json, tempfile
    >>> from safetensors.torch import save_file
    >>> folder = tempfile.TemporaryDirectory()
    >>> dims = LlamaDims(vocab_size=50, hidden_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
    ...                  intermediate_size=64)
    >>> theirs = LlamaLM(dims).state_dict()
    >>> save_file({hf: theirs[ours].contiguous() for hf, ours in llama_key_map(dims).items()},
    ...           f"{folder.name}/model.safetensors")
    >>> config = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
    ...           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
    ...           "tie_word_embeddings": True}
    >>> _ = Path(folder.name, "config.json").write_text(json.dumps(config))
    >>> lm = LlamaLM(read_llama_config(folder.name))
    >>> load_llama(lm, folder.name)  # 2 + 9 per block
    20
    >>> hidden, cache = lm(lm.embed(torch.tensor([[1, 2, 3]]), None), is_causal=True)
    >>> lm.logits(hidden).shape, cache["k0"].shape  # the cache keeps 2 key/value heads
    (torch.Size([1, 3, 50]), torch.Size([1, 2, 3, 8]))
    >>> folder.cleanup()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .decoders import State
from .hf_folder import load_mapped, model_type, read_config, read_weights
from .transformer import KV, attend_after_prefix


@dataclass
class LlamaDims:
    """The architecture of a Llama-family LM, as read from its config.json (saved with the model)."""

    vocab_size: int = 0
    hidden_dim: int = 0
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    intermediate_size: int = 0
    head_dim: int = 0                  # 0 = hidden_dim / num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    max_positions: int = 2048          # informative only: rotary positions have no table to outgrow

    def __post_init__(self) -> None:
        if self.num_heads and not self.head_dim:
            self.head_dim = self.hidden_dim // self.num_heads
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as Llama does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos, sin (B or 1, 1, T, d) for position ids (B, T) or (T,): frequencies duplicated over both halves."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    pos = positions if positions.dim() == 2 else positions[None]
    freqs = pos.float()[..., None] * inv_freq  # (B, T, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = d.num_heads, d.num_kv_heads, d.head_dim
        self.keep_query, self.query = False, None  # as nn/transformer.py's Attention: for explanations
        self.q_proj = nn.Linear(d.hidden_dim, d.num_heads * d.head_dim, bias=d.attention_bias)
        self.k_proj = nn.Linear(d.hidden_dim, d.num_kv_heads * d.head_dim, bias=d.attention_bias)
        self.v_proj = nn.Linear(d.hidden_dim, d.num_kv_heads * d.head_dim, bias=d.attention_bias)
        self.o_proj = nn.Linear(d.num_heads * d.head_dim, d.hidden_dim, bias=d.attention_bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:2], n, self.head_dim).transpose(1, 2)  # (B, n, T, d)

    def _expand(self, kv: KV) -> KV:
        """Key/value heads repeated for their query heads (grouped-query attention)."""
        n = self.heads // self.kv_heads
        return (kv[0].repeat_interleave(n, 1), kv[1].repeat_interleave(n, 1)) if n > 1 else kv

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: torch.Tensor | None,
                is_causal: bool, past: KV | None, prefix: KV | None) -> tuple[torch.Tensor, KV]:
        if mask is not None and is_causal:
            raise ValueError("pass one mask: is_causal or an explicit mask, not both")
        q = _rotate(self._heads(self.q_proj(x), self.heads), *rope)
        k = _rotate(self._heads(self.k_proj(x), self.kv_heads), *rope)
        v = self._heads(self.v_proj(x), self.kv_heads)
        if self.keep_query:
            self.query = q  # (B, H, T, d), rotated
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if prefix is not None:
            out = attend_after_prefix(q, self._expand(prefix), mask, self._expand((k, v)))
        else:  # SDPA shares each key/value head among its query heads without copying them
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                 enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(2)), (k, v)


class LlamaMLP(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.gate_proj = nn.Linear(d.hidden_dim, d.intermediate_size, bias=d.mlp_bias)
        self.up_proj = nn.Linear(d.hidden_dim, d.intermediate_size, bias=d.mlp_bias)
        self.down_proj = nn.Linear(d.intermediate_size, d.hidden_dim, bias=d.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaBlock(nn.Module):
    def __init__(self, d: LlamaDims):
        super().__init__()
        self.input_layernorm, self.attn = RMSNorm(d.hidden_dim, d.rms_norm_eps), LlamaAttention(d)
        self.post_attention_layernorm, self.mlp = RMSNorm(d.hidden_dim, d.rms_norm_eps), LlamaMLP(d)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: torch.Tensor | None,
                is_causal: bool, past: KV | None, prefix: KV | None) -> tuple[torch.Tensor, KV]:
        h, kv = self.attn(self.input_layernorm(x), rope, mask, is_causal, past, prefix)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaLM(nn.Module):
    """Token embedding `wte`, blocks `h`, final RMSNorm `ln_f`, output tied to `wte` or `lm_head`."""

    def __init__(self, dims: LlamaDims):
        super().__init__()
        self.dims = dims
        self.wte = nn.Embedding(dims.vocab_size, dims.hidden_dim)
        self.h = nn.ModuleList(LlamaBlock(dims) for _ in range(dims.num_layers))
        self.ln_f = RMSNorm(dims.hidden_dim, dims.rms_norm_eps)
        self.lm_head = None if dims.tie_embeddings else nn.Linear(dims.hidden_dim, dims.vocab_size, bias=False)
        for module in self.modules():  # Llama's initializer_range
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, T, D); positions act inside attention (`forward`), not here."""
        return self.wte(tokens)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: State | None = None, memory: list[KV] | None = None, prefix: list[KV] | None = None,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Embeddings (B, T, D) at `positions` (B, T) or (T,) -> final hidden states and the cache of these T.

        Without `positions` the T inputs follow the cached ones (`prefix` + `cache`), which holds
        when nothing in the cache is padding. `memory` (cross-attention) is not supported.
        """
        if memory is not None:
            raise ConfigError("a Llama LM has no cross-attention; use it as a decoder-only (prefix) LM")
        if positions is None:
            start = (cache["k0"].shape[2] if cache is not None else 0) + (prefix[0][0].shape[2] if prefix else 0)
            positions = torch.arange(start, start + x.shape[1], device=x.device)
        rope = rotary(positions, self.dims.head_dim, self.dims.rope_theta, x.dtype)
        new_cache: State = {}
        for i, block in enumerate(self.h):
            past = (cache[f"k{i}"], cache[f"v{i}"]) if cache is not None else None
            x, (new_cache[f"k{i}"], new_cache[f"v{i}"]) = block(
                x, rope, mask, is_causal, past, prefix[i] if prefix is not None else None)
        return self.ln_f(x), new_cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) if self.lm_head is not None else hidden @ self.wte.weight.T  # (B, T, V)


# ---- the Hugging Face folder --------------------------------------------------------------------
_LAYER_KEYS = ("input_layernorm.weight", "post_attention_layernorm.weight",
               *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
               *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")))
_RENAME = ("self_attn.", "attn.")  # our blocks call it `attn`, as TransformerLM's do
# Families with Llama's computation; anything in _EXPECTED that differs is refused rather than misread.
_MODEL_TYPES = ("llama",)  # SmolLM2 and Llama 1-2 folders say "llama"; other families differ in details
_EXPECTED: dict[str, Any] = {"hidden_act": "silu", "rope_scaling": None, "pretraining_tp": 1}
_ROPE_TYPES = (None, "default")  # transformers 5 writes rope_parameters: {rope_theta, rope_type}


def llama_key_map(dims: LlamaDims) -> dict[str, str]:
    """Hugging Face key (LlamaForCausalLM) -> LlamaLM key; the names differ, the tensors do not.

    Example:
        >>> llama_key_map(LlamaDims(8, 4, 1, 2, 1, 8))["model.layers.0.self_attn.q_proj.weight"]
        'h.0.attn.q_proj.weight'
    """
    layer_keys = list(_LAYER_KEYS)
    if dims.attention_bias:
        layer_keys += [f"self_attn.{p}_proj.bias" for p in "qkvo"]
    if dims.mlp_bias:
        layer_keys += [f"mlp.{p}_proj.bias" for p in ("gate", "up", "down")]
    mapping = {"model.embed_tokens.weight": "wte.weight", "model.norm.weight": "ln_f.weight"}
    if not dims.tie_embeddings:
        mapping["lm_head.weight"] = "lm_head.weight"
    for i in range(dims.num_layers):
        mapping.update({f"model.layers.{i}.{k}": f"h.{i}.{k.replace(*_RENAME)}" for k in layer_keys})
    return mapping


def is_llama_folder(path: str | Path) -> bool:
    """True when `path/config.json` names a Llama-family model (`model_type`)."""
    return model_type(path) in _MODEL_TYPES


def read_llama_config(path: str | Path) -> LlamaDims:
    """A Llama config.json -> LlamaDims; refuses settings this implementation does not compute."""
    file, data = read_config(path)
    if data.get("model_type") not in _MODEL_TYPES:
        raise CheckpointError(f"{file}: model_type={data.get('model_type')!r} is not a Llama-family model "
                              f"(expected one of {_MODEL_TYPES})")
    for key, want in _EXPECTED.items():
        if data.get(key, want) != want:
            raise CheckpointError(f"{file}: {key}={data[key]!r} is not supported (this loader implements "
                                  f"{key}={want!r})")
    rope = data.get("rope_parameters") or {}
    if not isinstance(rope, dict) or rope.get("rope_type") not in _ROPE_TYPES:
        raise CheckpointError(f"{file}: rope_parameters={rope!r} is not supported (plain rotary positions only)")
    try:
        heads = int(data["num_attention_heads"])
        theta = data.get("rope_theta", rope.get("rope_theta", 10000.0))
        return LlamaDims(
            vocab_size=int(data["vocab_size"]), hidden_dim=int(data["hidden_size"]),
            num_layers=int(data["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(data.get("num_key_value_heads") or heads),
            intermediate_size=int(data["intermediate_size"]), head_dim=int(data.get("head_dim") or 0),
            rope_theta=float(theta), rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(data.get("tie_word_embeddings", False)),
            attention_bias=bool(data.get("attention_bias", False)), mlp_bias=bool(data.get("mlp_bias", False)),
            max_positions=int(data.get("max_position_embeddings", 2048)))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{file}: not a usable Llama config ({type(err).__name__}: {err}); it needs "
                              f"vocab_size, hidden_size, num_hidden_layers, num_attention_heads, "
                              f"intermediate_size") from None


def load_llama(lm: LlamaLM, path: str | Path) -> int:
    """Copy a Llama folder's weights into `lm` (built from `read_llama_config(path)`); the tensor count.

    A tied folder may still store `lm_head.weight`; it must then equal the embedding.
    """
    file, state = Path(path) / "model.safetensors", read_weights(path)
    head, embedding = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if lm.dims.tie_embeddings and head is not None and embedding is not None and not torch.equal(head, embedding):
        raise CheckpointError(f"{file}: lm_head.weight differs from model.embed_tokens.weight but config.json "
                              f"says tie_word_embeddings=true")
    ignored = ("lm_head.weight",) if lm.dims.tie_embeddings else ()
    return load_mapped(lm, file, state, llama_key_map(lm.dims), "Llama", ignored)
