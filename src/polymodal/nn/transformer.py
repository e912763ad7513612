"""Transformer parts in GPT-2's layout, the transformer caption decoder, and a tiny ViT encoder.

Pre-norm blocks (LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual) whose parameter
names are GPT-2's (`h.0.attn.c_attn`, `ln_f`, `wte`, `wpe`), so a GPT-2 checkpoint maps onto
`TransformerLM` by a short key map (nn/gpt2.py). Attention is torch's
`scaled_dot_product_attention`, always with ONE mask: either `is_causal` alone (a full sequence
without padding) or an explicit boolean mask from `attention_mask` (cache, padding), never both.

The KV cache is plain data in the decoding state dict: `k{i}`/`v{i}` of shape (B, H, T, d) per
layer, batch first, so generate.py's beam search reorders it with `index_select(0, rows)` like
any other state. The image's cross-attention keys (`ck{i}`/`cv{i}`) pass through every step
unchanged, so beam search never copies them.

Example:
    >>> from polymodal.config import DecoderConfig
    >>> dec = TransformerCaptionDecoder(DecoderConfig(hidden_dim=32, num_heads=4), 16, 20)
    >>> state = dec.init_state(torch.randn(2, 9, 16))
    >>> logits, state, _ = dec.step(torch.tensor([1, 1]), state)
    >>> logits.shape, state["k0"].shape
    (torch.Size([2, 20]), torch.Size([2, 4, 1, 8]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig, EncoderConfig
from ..errors import ConfigError, InputError
from .decoders import CaptionDecoder, State
from .encoders import ImageEncoder, load_encoder_weights

KV = tuple[torch.Tensor, torch.Tensor]


def attention_mask(key_valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """One boolean SDPA mask (B, 1, q_len, T), True = may attend; the queries are the last q_len keys.

    Causal (no key after the query) and padding (`key_valid` (B, T), False = padding) in one
    tensor. A query always sees itself: a padding query would otherwise see nothing, and a fully
    masked row makes SDPA return NaN, which would then leak through the residual stream.

    Example:
        >>> attention_mask(torch.tensor([[False, True, True]]), 3)[0, 0].int().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    t = key_valid.shape[1]
    k_pos = torch.arange(t, device=key_valid.device)
    q_pos = k_pos[t - q_len:, None]
    mask = (k_pos[None] <= q_pos)[None] & key_valid[:, None, :]  # (B, Tq, T)
    return (mask | (k_pos[None] == q_pos)[None])[:, None]


def prefix_attention_mask(key_valid: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """`attention_mask` over a whole sequence, except that the first `prefix_len` (B,) positions of each row
    also see each other both ways (PaliGemma's prefix-LM mask: image and prompt read together, the reply causal).

    Example:
        >>> prefix_attention_mask(torch.ones(1, 3, dtype=torch.bool), torch.tensor([2]))[0, 0].int().tolist()
        [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    t = key_valid.shape[1]
    inside = torch.arange(t, device=key_valid.device)[None] < prefix_len[:, None]  # (B, T)
    both = (inside[:, :, None] & inside[:, None, :] & key_valid[:, None, :])[:, None]  # (B, 1, T, T)
    return attention_mask(key_valid, t) | both


def _sincos(coords: torch.Tensor, n_freq: int) -> torch.Tensor:
    """sin and cos of coords (n,) at n_freq geometric frequencies (Vaswani et al. sec. 3.5): (n, 2 * n_freq)."""
    freq = 1.0 / 10000 ** (torch.arange(n_freq, device=coords.device, dtype=torch.float32) / max(n_freq, 1))
    angles = coords.float()[:, None] * freq
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 2D sine-cosine positions (h * w, dim) (MAE, appendix A): half the width for y, half for x."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.cat([_sincos(ys.reshape(-1), dim // 4), _sincos(xs.reshape(-1), dim // 4)], dim=1)
    return F.pad(pos, (0, dim - pos.shape[1]))  # a width not divisible by 4: zero columns at the end


def grid_positions(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """Positions (n, dim) for n regions: 2D on a square grid (CNN maps, ViT patches), else 1D in order."""
    side = math.isqrt(n)
    if side * side == n:
        return sincos_2d(side, side, dim, device)
    return F.pad(_sincos(torch.arange(n, device=device), dim // 2), (0, dim % 2))


class Attention(nn.Module):
    """Multi-head attention; self-attention with a fused qkv projection (GPT-2's `c_attn`), or cross."""

    def __init__(self, dim: int, heads: int, dropout: float, cross: bool = False):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"hidden_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.dropout, self.cross = heads, dropout, cross
        # Explanations read where the newest query looked (the prefix LM's heatmaps); off in training.
        self.keep_query, self.query = False, None
        if cross:
            self.q_proj, self.kv_proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, d)

    def memory_kv(self, memory: torch.Tensor) -> KV:
        """Cross-attention keys and values of the image regions, computed once per image."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                past: KV | None = None, prefix: KV | None = None) -> tuple[torch.Tensor, KV]:
        """x (B, T, D) -> (B, T, D) and this layer's keys/values: `past` + T new ones (self), or `past` (cross).

        `prefix` (decoding one token after a cached prefix): keys/values that come before `past`, attended
        to without being concatenated to it; `mask` is then `attend_after_prefix`'s.
        """
        if mask is not None and is_causal:
            raise ValueError("pass one mask: is_causal or an explicit mask, not both")
        if self.cross:
            q, (k, v) = self._heads(self.q_proj(x)), past
        else:
            q, k, v = (self._heads(t) for t in self.c_attn(x).chunk(3, dim=-1))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self.keep_query:
            self.query = q  # (B, H, T, d)
        if prefix is not None:
            out = attend_after_prefix(q, prefix, mask, (k, v))
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(out.transpose(1, 2).flatten(2)), (k, v)


def attend_after_prefix(q: torch.Tensor, prefix: KV, mask: torch.Tensor | None, rest: KV) -> torch.Tensor:
    """Attention of ONE query per row (B, H, 1, d) over the keys [prefix; rest] as if concatenated.

    Decoding after a long prefix (an image's visual tokens) would otherwise copy the whole prefix into
    a new cache every step; the two score blocks share one softmax instead. `mask` (B, 1, 1, P) masks
    the prefix alone (every key in `rest` comes before the query), or (B, 1, 1, P + T) both, when rows
    that joined a running batch later have padding in `rest` too.
    """
    if q.shape[2] != 1:
        raise ValueError("attend_after_prefix decodes one token at a time")
    q = q * q.shape[-1] ** -0.5
    p = prefix[0].shape[2]
    first, second = q @ prefix[0].transpose(-1, -2), q @ rest[0].transpose(-1, -2)  # (B, H, 1, P), (B, H, 1, T)
    if mask is not None:
        first = first.masked_fill(~mask[..., :p], -math.inf)
        if mask.shape[-1] > p:
            second = second.masked_fill(~mask[..., p:], -math.inf)
    weights = torch.cat([first, second], dim=-1).softmax(-1)
    return weights[..., :p] @ prefix[1] + weights[..., p:] @ rest[1]


class MLP(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's "gelu_new"


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to image regions, MLP."""

    def __init__(self, dim: int, heads: int, dropout: float, cross: bool = False,
                 attention_dropout: float | None = None):
        super().__init__()
        attn_p = dropout if attention_dropout is None else attention_dropout
        self.ln_1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, attn_p)
        self.ln_x = nn.LayerNorm(dim) if cross else None
        self.crossattn = Attention(dim, heads, attn_p, cross=True) if cross else None
        self.ln_2, self.mlp = nn.LayerNorm(dim), MLP(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                past: KV | None = None, memory: KV | None = None, prefix: KV | None = None) -> tuple[torch.Tensor, KV]:
        h, kv = self.attn(self.ln_1(x), mask, is_causal, past, prefix)
        x = x + self.drop(h)
        if self.crossattn is not None:
            x = x + self.drop(self.crossattn(self.ln_x(x), past=memory)[0])
        return x + self.mlp(self.ln_2(x)), kv


class TransformerLM(nn.Module):
    """GPT-2: token + position embeddings, blocks, final LayerNorm, output tied to the token embedding.

    `attention_dropout` (None = `dropout`) is the dropout on the attention weights alone: at 0, CPU attention runs
    PyTorch's fused kernel instead of materialising the weights to drop them.
    """

    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, max_positions: int,
                 dropout: float, cross: bool = False, attention_dropout: float | None = None):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, dim), nn.Embedding(max_positions, dim)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(TransformerBlock(dim, heads, dropout, cross, attention_dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) at position ids (B, T) or (T,) -> embeddings (B, T, D)."""
        if positions.numel() and int(positions.max()) >= self.wpe.num_embeddings:
            raise InputError(f"text longer than the model's {self.wpe.num_embeddings} positions; "
                             f"lower max_len or raise model.decoder.max_positions")
        return self.wte(tokens) + self.wpe(positions)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: State | None = None, memory: list[KV] | None = None,
                prefix: list[KV] | None = None, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Embeddings (B, T, D) -> final hidden states (B, T, D) and the cache with these T positions added.

        `prefix`: per layer, cached keys/values before `cache` (see `attend_after_prefix`); not in the result.
        `positions` is unused: GPT-2's positions are learned and added by `embed` (a rotary LM, nn/llama.py,
        takes them here, so callers pass them to either).
        """
        x = self.drop(x)
        new_cache: State = {}
        for i, block in enumerate(self.h):
            past = (cache[f"k{i}"], cache[f"v{i}"]) if cache is not None else None
            x, (new_cache[f"k{i}"], new_cache[f"v{i}"]) = block(
                x, mask, is_causal, past, memory[i] if memory is not None else None,
                prefix[i] if prefix is not None else None)
        return self.ln_f(x), new_cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.wte.weight.T  # tied output embedding (B, T, V)


class TransformerCaptionDecoder(CaptionDecoder):
    """A GPT-2-style decoder with cross-attention to image regions (the "transformer" decoder).

    Regions (B, N, C) are projected to the model width and given fixed 2D positions, so that the
    words "left of" and "above" have something to attend to.
    """

    join_states = None  # one position for the whole batch (the cache length): rows cannot join later

    def __init__(self, cfg: DecoderConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.feature_proj = nn.Sequential(nn.Linear(feature_dim, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim))
        self.lm = TransformerLM(vocab_size, cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.max_positions,
                                cfg.dropout, cross=True)

    def _memory(self, features: torch.Tensor) -> list[KV]:
        memory = self.feature_proj(features)
        memory = memory + grid_positions(memory.shape[1], memory.shape[2], memory.device).to(memory.dtype)
        return [block.crossattn.memory_kv(memory) for block in self.lm.h]

    def init_state(self, features: torch.Tensor) -> State:
        state: State = {}
        for i, (k, v) in enumerate(self._memory(features)):
            state[f"ck{i}"], state[f"cv{i}"] = k, v
            state[f"k{i}"], state[f"v{i}"] = k[:, :, :0], v[:, :, :0]  # empty self-attention cache (B, H, 0, d)
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        n = len(self.lm.h)
        position = torch.full((1,), state["k0"].shape[2], device=tokens.device)
        x = self.lm.embed(tokens[:, None], position)
        # One query that may see every cached key: no mask at all.
        hidden, cache = self.lm(x, cache=state, memory=[(state[f"ck{i}"], state[f"cv{i}"]) for i in range(n)])
        return self.lm.logits(hidden[:, -1]), {**state, **cache}, None

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        # Right padding needs no mask: a padding key comes after every real query, so causality hides it.
        x = self.lm.embed(tokens, torch.arange(tokens.shape[1], device=tokens.device))
        hidden, _ = self.lm(x, is_causal=True, memory=self._memory(features))
        return self.lm.logits(hidden), {"attention": None, "losses": {}}


def transformer(cfg: DecoderConfig, feature_dim: int, vocab_size: int) -> CaptionDecoder:
    return TransformerCaptionDecoder(cfg, feature_dim, vocab_size)


class ViTEncoder(ImageEncoder):
    """A tiny ViT (Dosovitskiy et al. 2021) without a class token: 8x8 patches, fixed 2D positions.

    Width 4 * `width` (as the small CNN's output), 4 blocks, 4 heads; stages = patch embedding,
    the blocks, the final norm, so `fine_tune_last_n` and `freeze` work as for the CNNs.
    """

    patch, depth, heads = 8, 4, 4

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        dim = self.out_dim = 4 * cfg.width
        self.stages = nn.ModuleList([nn.Conv2d(3, dim, self.patch, self.patch),
                                     *(TransformerBlock(dim, self.heads, 0.0) for _ in range(self.depth)),
                                     nn.LayerNorm(dim)])
        if cfg.pretrained:
            load_encoder_weights(self, cfg.pretrained)
        self.apply_trainability()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.stages[0](images)  # (B, C, h, w)
        b, c, h, w = fmap.shape
        x = fmap.flatten(2).transpose(1, 2) + sincos_2d(h, w, c, fmap.device).to(fmap.dtype)
        for block in self.stages[1:-1]:
            x = block(x)[0]  # bidirectional: no mask
        return self.stages[-1](x).transpose(1, 2).reshape(b, c, h, w)


def vit_tiny(cfg: EncoderConfig) -> ImageEncoder:
    return ViTEncoder(cfg)
