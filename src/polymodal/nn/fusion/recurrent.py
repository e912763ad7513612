"""Recurrent reading: `cross_attention`, then an LSTM cell that reads the grounded words and the regions
one glimpse at a time.

"Is the circle left of the square?" needs two looked-up positions compared. Pooling (a mean or
parallel glimpses) sees both lookups at once and must untangle them; a reader that attends to one
thing per step and carries what it found in its state (as the assistant's decoder does when it
answers "is it left of the circle?", docs/vqa.md) can read the circle, then the square, then
compare. In the spirit of MAC (Hudson & Manning 2018), kept to one LSTM cell and additive attention.

    memory = [grounded question words; regions]              (B, T + N, D)
    h_0, c_0 = tanh(W [pooled question; pooled regions])
    r_t = attend(memory | h_{t-1});  h_t, c_t = LSTMCell(r_t, (h_{t-1}, c_{t-1}))     t = 1..reads
    out = MLP([h_reads; pooled question; pooled regions])

Example:
    >>> from polymodal.nn.fusion.base import FusionConfig, build_fusion
    >>> f = build_fusion(FusionConfig(name="recurrent", dim=8, hidden=16, heads=2, reads=3), {"image": 4, "text": 6})
    >>> f({"image": torch.randn(2, 9, 4), "text": torch.randn(2, 5, 6)}).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..attention import AdditiveAttention
from .base import CrossAttentionFusion, Features, FusionConfig, Masks, mlp, pool


class RecurrentReadFusion(CrossAttentionFusion):
    """`cross_attention` whose result is read by `reads` steps of an attending LSTM cell."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.query_pool = None  # the reader replaces the pooled-question path (and its glimpses)
        self.reads = max(cfg.reads, 1)
        self.init = nn.Linear(2 * cfg.dim, 2 * cfg.dim)
        self.attention = AdditiveAttention(cfg.dim, cfg.dim, cfg.dim)
        self.cell = nn.LSTMCell(cfg.dim, cfg.dim)
        self.out = mlp(3 * cfg.dim, cfg.hidden, cfg.dim, cfg.dropout)  # [reader state; question; regions]

    def forward(self, features: Features, masks: Masks = None, return_attention: bool = False):
        a = self.attend(features, masks)
        question, context = pool(a["h"], a["q_mask"]), pool(a["context"], a["context_mask"])
        memory = torch.cat([a["h"], a["context"]], dim=1)  # (B, T + N, D)
        memory_mask = torch.cat([a["q_mask"], a["context_mask"]], dim=1)
        keys = self.attention.feature_proj(memory)  # projected once, read `reads` times
        h, c = torch.tanh(self.init(torch.cat([question, context], dim=-1))).chunk(2, dim=-1)
        reads = []
        for _ in range(self.reads):
            read, alpha = self.attention(memory, h, keys, memory_mask)
            h, c = self.cell(read, (h, c))
            reads.append(alpha)
        fused = torch.relu(self.out(torch.cat([h, question, context], dim=-1)))
        return (fused, torch.stack(reads, dim=1)) if return_attention else fused
