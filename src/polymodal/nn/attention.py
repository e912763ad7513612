"""Additive (Bahdanau) attention over image regions, as in Show, Attend and Tell (Xu et al. 2015, sec. 3.1.2)."""

from __future__ import annotations

import torch
from torch import nn


class AdditiveAttention(nn.Module):
    """score_i = w^T tanh(W_f f_i + W_h h); returns the weighted context and the weights.

    Example:
        >>> attn = AdditiveAttention(feature_dim=8, hidden_dim=4, attention_dim=6)
        >>> ctx, alpha = attn(torch.randn(2, 5, 8), torch.randn(2, 4))
        >>> ctx.shape, alpha.shape
        (torch.Size([2, 8]), torch.Size([2, 5]))
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor, projected: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # `projected` lets a decoder compute W_f f once per image instead of once per step;
        # `mask` (B, N), True where a position may be attended (padding excluded).
        keys = self.feature_proj(features) if projected is None else projected  # (B, N, A)
        scores = self.score(torch.tanh(keys + self.hidden_proj(hidden).unsqueeze(1))).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = scores.softmax(dim=-1)
        context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, C)
        return context, alpha
