"""Motion slots: per frame, a few learned queries pick the regions where something is or changes, then a
transformer relates the frames.

An event is about one object in a few regions: a frame pooled to one vector blurs it into the background,
and full space-time attention over every region of every frame is slow and over-fits small clip sets.
Here each region token already carries what is there, how it changed since the previous frame
(`frame_diff`), where it is (2D sine-cosine positions) and when (time positions), all added by
`MediaEncoder.encode_video`. Per frame, `slots` learned queries attend over its regions (attention is
drawn to the regions that change, and the pooled token keeps their position: left vs right, edge vs
centre); the slots are joined into one frame token and a transformer over time tells in from out
(a shape at the edge that grows inward enters; one that shrinks toward the edge leaves).
Cost: T * R * slots for the pooling, T^2 for time.

Example:
    >>> from polymodal.nn.media import MediaConfig
    >>> model = MotionSlots(MediaConfig(dim=32, heads=4, temporal_layers=2))
    >>> model(torch.zeros(2, 8, 16, 32)).shape  # (B, T frames, R regions, D) -> (B, T, D)
    torch.Size([2, 8, 32])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .media import MediaConfig


class MotionSlots(nn.Module):
    """(B, T, R, D) region tokens -> `slots` attention pools per frame -> temporal transformer -> (B, T, D)."""

    per_region = True  # MediaEncoder hands this model every region as a token

    def __init__(self, cfg: MediaConfig, slots: int = 2):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, slots, cfg.dim) * 0.02)
        self.region_norm = nn.LayerNorm(cfg.dim)
        self.pool = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.join = nn.Linear(slots * cfg.dim, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.time = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, r, d = x.shape
        regions = self.region_norm(x.reshape(b * t, r, d))
        slots, _ = self.pool(self.queries.expand(b * t, -1, -1), regions, regions)  # (B*T, S, D)
        frames = self.join(slots.reshape(b, t, -1))  # (B, T, D)
        return self.norm(self.time(frames))


def motion_slots(cfg: MediaConfig) -> nn.Module:
    return MotionSlots(cfg)
