"""Grounded word pairs: a relation network over the question's words, each placed where it looked.

"Is the circle left of the square?" is a comparison of two positions, and each of them is already
known: the word "circle" attends to the circle's regions, "square" to the square's. So every word i
gets an explicit location p_i = sum_n alpha_in xy_n (its attention over the regions, in the last
`cross_attention` block) and a relation network (Santoro et al. 2017) looks at every pair of words:

    g([h_i, h_j, p_i - p_j])  for all real words i != j,  averaged  ->  f  ->  r      (B, D)
    out = MLP([pooled question; pooled regions; r])

A pair needs no selection step (the slots of `relation` had to find the objects first); the words'
contexts (a BiLSTM) tell g which one is the subject and which relation is asked, and p_i - p_j gives
it the sign to compare. T words make T * T pairs (T <= 20 here), computed as a sum of per-word terms.

Example:
    >>> from polymodal.nn.fusion.base import FusionConfig, build_fusion
    >>> f = build_fusion(FusionConfig(name="word_pairs", dim=8, hidden=16, heads=2), {"image": 4, "text": 6})
    >>> f({"image": torch.randn(2, 9, 4), "text": torch.randn(2, 5, 6)}).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .base import CrossAttentionFusion, Features, FusionConfig, Masks, mlp, pool


class WordPairFusion(CrossAttentionFusion):
    """`cross_attention` plus a relation network over pairs of grounded question words."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        d, hidden = cfg.dim, cfg.hidden
        self.g_first = nn.Linear(d, hidden)                  # word i
        self.g_second = nn.Linear(d, hidden, bias=False)     # word j
        self.g_offset = nn.Linear(4, hidden, bias=False)     # p_i - p_j and |p_i - p_j|
        self.g_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.f = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(hidden, d), nn.ReLU())
        self.out = mlp(self.query_dim + 2 * d, cfg.hidden, d, cfg.dropout)  # [question; regions; relations]

    def relations(self, a: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D): f(mean over real word pairs i != j of g([h_i, h_j, p_i - p_j]))."""
        h, mask = a["h"], a["q_mask"]
        where = a["weights"] @ a["xy"].to(h.dtype)  # (B, T, 2): each word's attended location
        offset = where.unsqueeze(2) - where.unsqueeze(1)  # (B, T, T, 2): p_i - p_j
        pair = (self.g_first(h).unsqueeze(2) + self.g_second(h).unsqueeze(1)
                + self.g_offset(torch.cat([offset, offset.abs()], dim=-1)))
        g = self.g_out(pair)  # (B, T, T, H)
        real = mask.unsqueeze(2) & mask.unsqueeze(1)
        real &= ~torch.eye(h.shape[1], dtype=torch.bool, device=h.device)  # no word with itself
        weight = real.unsqueeze(-1).to(g.dtype)
        return self.f((g * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1.0))

    def forward(self, features: Features, masks: Masks = None, return_attention: bool = False):
        a = self.attend(features, masks)
        parts = [self.pooled_query(a), pool(a["context"], a["context_mask"]), self.relations(a)]
        fused = torch.relu(self.out(torch.cat(parts, dim=-1)))
        return (fused, a["weights"]) if return_attention else fused
