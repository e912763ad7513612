"""Divided space-time attention over per-frame region tokens (TimeSformer, Bertasius et al. 2021).

Pooling a frame to one vector throws away where things are, and with it left from right and in from
out. Here each frame keeps its grid of regions as tokens (each with its 2D position and, with
`frame_diff`, how it changed since the previous frame); every block lets each region attend across
time (what happened at this place), then each frame attend across its regions (where in the frame).
Cost grows as T * R * (T + R), not (T * R)^2. A learned query then pools each frame's regions into one
token (attention picks the regions where something is, with what they know of place and motion), so a
decoder reads T tokens, not T * R.

Example:
    >>> from polymodal.nn.media import MediaConfig
    >>> model = SpaceTimeTransformer(MediaConfig(dim=32, heads=4, temporal_layers=2))
    >>> model(torch.zeros(2, 8, 16, 32)).shape  # (B, T frames, R regions, D) -> (B, T, D)
    torch.Size([2, 8, 32])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .media import MediaConfig


def _layer(cfg: MediaConfig) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                      norm_first=True)


class SpaceTimeBlock(nn.Module):
    """Attention across frames for every region, then across regions within every frame."""

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        self.time, self.space = _layer(cfg), _layer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, r, d = x.shape
        x = self.time(x.transpose(1, 2).reshape(b * r, t, d)).reshape(b, r, t, d).transpose(1, 2)
        return self.space(x.reshape(b * t, r, d)).reshape(b, t, r, d)


class SpaceTimeTransformer(nn.Module):
    """(B, T, R, D) region tokens -> `temporal_layers` divided space-time blocks -> pooled (B, T, D)."""

    per_region = True  # MediaEncoder hands this model every region as a token

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        self.blocks = nn.ModuleList(SpaceTimeBlock(cfg) for _ in range(cfg.temporal_layers))
        self.query = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pool = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        b, t, r, d = x.shape
        regions = x.reshape(b * t, r, d)
        pooled, _ = self.pool(self.query.expand(b * t, -1, -1), regions, regions)  # (B*T, 1, D)
        return self.norm(pooled.reshape(b, t, d))


def space_time_transformer(cfg: MediaConfig) -> nn.Module:
    return SpaceTimeTransformer(cfg)
