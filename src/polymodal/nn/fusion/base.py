"""Fusion of any number of modalities: feature-level (one fused vector) and decision-level (votes).

Every variant has one interface. It is built from a `FusionConfig`, the feature width of each
modality and (for decision-level fusion) the number of classes, and maps a dict of features to a
tensor:

    fusion = build_fusion(FusionConfig(name="gated"), {"image": 64, "text": 128})
    fused = fusion({"image": regions, "text": tokens}, masks={"text": token_mask})  # (B, fusion.out_dim)

A feature may be a vector (B, C) or a sequence (B, N, C) (image regions, question tokens, audio
frames); `masks[name]` (B, N), True at real positions, excludes padding. Variants that need one
vector per modality take the masked mean of a sequence.

Feature level (`level == "feature"`, output (B, out_dim), a classifier goes on top):
    concat_linear    [x_1; ...; x_M] -> Linear                      (a linear combination)
    concat_mlp       [x_1; ...; x_M] -> MLP                         (a nonlinear mapping)
    gated            sum_m z_m * tanh(W_m x_m), z = softmax over modalities (GMU, Arevalo et al. 2017)
    bilinear         low-rank bilinear pooling prod_m tanh(U_m x_m)  (MLB, Kim et al. 2017)
    film             the `query` modality scales and shifts every region of the others (FiLM, Perez et al. 2018)
    cross_attention  `query` tokens attend to the regions of the others (nn.MultiheadAttention)
    relation         cross_attention + a relation network over pairs of question-selected regions (relation.py)
    joint            one transformer over [CLS; every modality's tokens] ("merged attention", joint.py)
    recurrent        cross_attention, then an LSTM cell reads words and regions a glimpse at a time (recurrent.py)
    word_pairs       cross_attention + a relation network over pairs of words placed where they looked (word_pairs.py)

Decision level (`level == "decision"`, votes.py; output (B, num_classes) log-probabilities): one classifier head
per modality (`head_logits`), then `combine`:
    vote_fixed    sum_m w_m log p_m with fixed weights (config `weights`, default equal)
    vote_learned  the same with learned weights softmax(alpha)
    vote_hard     majority vote of the heads' argmax; ties go to the most confident voter
    vote_soft     the mean of the heads' probabilities

Example:
    >>> f = build_fusion(FusionConfig(name="vote_soft", hidden=8), {"image": 4, "text": 6}, num_classes=3)
    >>> probs = f({"image": torch.randn(2, 5, 4), "text": torch.randn(2, 6)}).exp()
    >>> torch.allclose(probs.sum(-1), torch.ones(2))
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import FUSION
from .relation import RelationHead, grid_xy

Features = Mapping[str, torch.Tensor]
Masks = Mapping[str, torch.Tensor] | None


@dataclass
class FusionConfig:
    name: str = "cross_attention"     # a key of registry.FUSION
    dim: int = 128                    # width of the fused vector (feature level)
    hidden: int = 256                 # hidden width of MLPs and per-modality heads
    heads: int = 4                    # cross_attention heads
    layers: int = 1                   # cross_attention blocks
    dropout: float = 0.1
    query: str = "text"               # the modality that asks: attends (cross_attention), conditions (film)
    weights: list[float] = field(default_factory=list)  # vote_fixed: one per modality, in `dims` order
    slots: int = 4                    # relation: objects the question selects per image (Shapes World: 1-4)
    glimpses: int = 0                 # cross_attention, relation: pool the query tokens by this many learned
                                      # attentions, concatenated (0 = their mean)
    reads: int = 4                    # recurrent: attention steps of the reader


def pool(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) stays as is; (B, N, C) becomes the mean over the positions where `mask` is True."""
    if x.ndim == 2:
        return x
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def as_sequence(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A vector becomes a one-element sequence; returns (B, N, C) and its mask (B, N)."""
    if x.ndim == 2:
        x = x.unsqueeze(1)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, mask.bool()


class Fusion(nn.Module):
    """Base class: checks the modalities and gives subclasses the pooled vectors."""

    level: ClassVar[str] = "feature"
    min_modalities: ClassVar[int] = 1
    out_dim: int

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__()
        self.cfg = replace(cfg, weights=list(cfg.weights))  # never share (or mutate) the caller's config
        self.dims = dict(dims)
        self.modalities = tuple(dims)
        self.num_classes = num_classes
        if len(self.modalities) < self.min_modalities:
            raise ConfigError(f"fusion {cfg.name!r} needs at least {self.min_modalities} modalities, "
                              f"got {list(self.modalities)}")

    def _check(self, features: Features) -> None:
        if set(features) != set(self.modalities):
            raise ValueError(f"fusion {self.cfg.name!r} was built for {sorted(self.modalities)}, "
                             f"got features for {sorted(features)}")

    def pooled(self, features: Features, masks: Masks) -> list[torch.Tensor]:
        self._check(features)
        masks = masks or {}
        return [pool(features[m], masks.get(m)) for m in self.modalities]

    def _require_query(self) -> None:
        if self.cfg.query not in self.modalities:
            raise ConfigError(f"fusion {self.cfg.name!r}: fusion.query={self.cfg.query!r} is not one of the "
                              f"modalities {list(self.modalities)}")


def mlp(cin: int, hidden: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, cout))


class AttentivePool(nn.Module):
    """`glimpses` learned attention distributions over a sequence; their weighted sums, concatenated
    (structured self-attention, Lin et al. 2017). A mean adds up what "circle" and "square" each found,
    so "is the circle left of the square?" cannot tell them apart; separate glimpses keep them apart."""

    def __init__(self, dim: int, glimpses: int):
        super().__init__()
        self.score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, glimpses))
        self.out_dim = dim * glimpses

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.score(x).masked_fill(~mask.unsqueeze(-1), -math.inf).softmax(dim=1)  # (B, T, G)
        return torch.einsum("btg,btd->bgd", weights, x).flatten(1)  # (B, G * D)


# ----------------------------------------------------------------------------- feature level
class ConcatLinearFusion(Fusion):
    """Concatenate the pooled modalities, one linear map: the linear-combination baseline."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.proj = nn.Linear(sum(self.dims.values()), cfg.dim)
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        return self.proj(torch.cat(self.pooled(features, masks), dim=-1))  # (B, dim)


class ConcatMLPFusion(Fusion):
    """Concatenate the pooled modalities, then a two-layer MLP: a nonlinear mapping."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.mlp = mlp(sum(self.dims.values()), cfg.hidden, cfg.dim, cfg.dropout)
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        return torch.relu(self.mlp(torch.cat(self.pooled(features, masks), dim=-1)))


class GatedFusion(Fusion):
    """Gated multimodal unit for M modalities: a softmax gate per output unit picks each modality's share."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.proj = nn.ModuleList([nn.Linear(self.dims[m], cfg.dim) for m in self.modalities])
        self.gate = nn.Linear(sum(self.dims.values()), cfg.dim * len(self.modalities))
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        vectors = self.pooled(features, masks)
        h = torch.stack([torch.tanh(p(v)) for p, v in zip(self.proj, vectors, strict=True)], dim=1)  # (B, M, D)
        z = self.gate(torch.cat(vectors, dim=-1)).view(h.shape).softmax(dim=1)  # (B, M, D), sums to 1 over M
        return (z * h).sum(dim=1)


class BilinearFusion(Fusion):
    """Low-rank bilinear pooling: the elementwise product of projected modalities models every pairwise
    (and, for M > 2, higher-order) interaction at the cost of one projection per modality."""

    min_modalities = 2

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.proj = nn.ModuleList([nn.Linear(self.dims[m], cfg.hidden) for m in self.modalities])
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden, cfg.dim)
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        vectors = self.pooled(features, masks)
        joint = math.prod(torch.tanh(p(v)) for p, v in zip(self.proj, vectors, strict=True))  # (B, hidden)
        return torch.relu(self.out(self.dropout(joint)))


class FiLMFusion(Fusion):
    """FiLM: the pooled `query` modality predicts a scale and shift for every region of the others,
    so the question can select regions (those that respond after the ReLU) before pooling."""

    min_modalities = 2

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self._require_query()
        self.others = tuple(m for m in self.modalities if m != cfg.query)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], cfg.dim) for m in self.others})
        self.film = nn.ModuleDict({m: nn.Linear(self.dims[cfg.query], 2 * cfg.dim) for m in self.others})
        self.post = nn.ModuleDict({m: nn.Linear(cfg.dim, cfg.dim) for m in self.others})
        self.out = mlp(cfg.dim * len(self.others) + self.dims[cfg.query], cfg.hidden, cfg.dim, cfg.dropout)
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        self._check(features)
        masks = masks or {}
        q = pool(features[self.cfg.query], masks.get(self.cfg.query))  # (B, Cq)
        parts = []
        for m in self.others:
            x, mask = as_sequence(features[m], masks.get(m))
            gamma, beta = self.film[m](q).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
            h = torch.relu((1 + gamma) * self.proj[m](x) + beta)  # 1 + gamma: starts as the identity
            h = h + torch.relu(self.post[m](h))  # (B, N, D), a residual block as in the FiLM paper
            parts.append(pool(h, mask))
        return torch.relu(self.out(torch.cat([*parts, q], dim=-1)))


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer decoder block: queries attend to each other (when `q_mask` is given), then
    to a context, then a feed-forward layer; all residual. Self-attention lets one word use what another
    found ("is the circle left of the square?" compares two looked-up positions)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_s, self.norm_q, self.norm_kv, self.norm_ff = (nn.LayerNorm(dim) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, q: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor,
                q_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if q_mask is not None:
            s = self.norm_s(q)
            q = q + self.self_attn(s, s, s, key_padding_mask=~q_mask, need_weights=False)[0]
        kv = self.norm_kv(ctx)
        attended, weights = self.attn(self.norm_q(q), kv, kv, key_padding_mask=~ctx_mask, need_weights=True)
        q = q + attended  # (B, T, D)
        return q + self.ff(self.norm_ff(q)), weights  # weights (B, T, N), averaged over heads


class CrossAttentionFusion(Fusion):
    """`query` tokens (question words) attend to the tokens of every other modality (image regions, ...),
    which are projected to one width and tagged with a learned modality embedding."""

    min_modalities = 2

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self._require_query()
        if cfg.dim % cfg.heads:
            raise ConfigError(f"fusion.dim ({cfg.dim}) must be divisible by fusion.heads ({cfg.heads})")
        self.others = tuple(m for m in self.modalities if m != cfg.query)
        self.query_proj = nn.Linear(self.dims[cfg.query], cfg.dim)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], cfg.dim) for m in self.others})
        self.type_embed = nn.Parameter(torch.zeros(len(self.others), cfg.dim))
        self.blocks = nn.ModuleList([CrossAttentionBlock(cfg.dim, cfg.heads, cfg.dropout)
                                     for _ in range(max(cfg.layers, 1))])
        self.query_pool = AttentivePool(cfg.dim, cfg.glimpses) if cfg.glimpses > 0 else None
        self.query_dim = self.query_pool.out_dim if self.query_pool is not None else cfg.dim
        # The pooled context rides along: softmax attention normalises counts away, a mean keeps them.
        self.out = mlp(self.query_dim + cfg.dim, cfg.hidden, cfg.dim, cfg.dropout)
        self.out_dim = cfg.dim

    def attend(self, features: Features, masks: Masks = None) -> dict[str, torch.Tensor]:
        """The attended query "h" (B, T, D) and "q_mask", the projected "context" (B, N, D) of the other
        modalities with "context_mask" and each token's grid "xy" (1, N, 2), the last attention "weights"."""
        self._check(features)
        masks = masks or {}
        q, q_mask = as_sequence(features[self.cfg.query], masks.get(self.cfg.query))
        ctx, ctx_mask, xy = [], [], []
        for i, m in enumerate(self.others):
            x, mask = as_sequence(features[m], masks.get(m))
            ctx.append(self.proj[m](x) + self.type_embed[i])
            ctx_mask.append(mask)
            xy.append(grid_xy(x.shape[1], x.device))
        context, context_mask = torch.cat(ctx, dim=1), torch.cat(ctx_mask, dim=1)  # (B, N, D), (B, N)
        h = self.query_proj(q)  # (B, T, D)
        weights = None
        for block in self.blocks:
            h, weights = block(h, context, context_mask, q_mask)
        return {"h": h, "q_mask": q_mask, "context": context, "context_mask": context_mask,
                "xy": torch.cat(xy, dim=1), "weights": weights}

    def pooled_query(self, a: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attended query tokens as one vector (B, query_dim): their mean, or `glimpses` attentions."""
        return pool(a["h"], a["q_mask"]) if self.query_pool is None else self.query_pool(a["h"], a["q_mask"])

    def forward(self, features: Features, masks: Masks = None, return_attention: bool = False):
        a = self.attend(features, masks)
        pooled = [self.pooled_query(a), pool(a["context"], a["context_mask"])]
        fused = torch.relu(self.out(torch.cat(pooled, dim=-1)))
        return (fused, a["weights"]) if return_attention else fused


class RelationFusion(CrossAttentionFusion):
    """`cross_attention` plus a relation network over `slots` question-selected regions (relation.py):
    the attended question selects regions and conditions g on pairs of them, whose (x, y) g can compare.

    Example:
        >>> f = build_fusion(FusionConfig(name="relation", dim=8, hidden=16, heads=2, slots=3), {"image": 4, "text": 6})
        >>> f({"image": torch.randn(2, 9, 4), "text": torch.randn(2, 5, 6)}).shape
        torch.Size([2, 8])
    """

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.relation = RelationHead(cfg.dim, cfg.dim, cfg.dim, cfg.dim, cfg.slots, cfg.dropout)
        self.out = mlp(self.query_dim + 2 * cfg.dim, cfg.hidden, cfg.dim, cfg.dropout)  # [question; context; relations]

    def forward(self, features: Features, masks: Masks = None, return_attention: bool = False):
        a = self.attend(features, masks)
        question = self.pooled_query(a)  # (B, query_dim)
        relations = self.relation(a["context"], a["xy"], a["h"], a["context_mask"], a["q_mask"])  # (B, D)
        fused = torch.relu(self.out(torch.cat([question, pool(a["context"], a["context_mask"]), relations], dim=-1)))
        return (fused, a["weights"]) if return_attention else fused


def build_fusion(cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0) -> Fusion:
    """Build the fusion variant `cfg.name` for modalities of widths `dims` (name -> C).

    Example:
        >>> build_fusion(FusionConfig(name="concat_linear", dim=16), {"image": 8, "text": 4}).out_dim
        16
    """
    return FUSION.build(cfg.name, cfg, dims, num_classes)
