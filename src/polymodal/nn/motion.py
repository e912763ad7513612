"""Motion slots: per frame, learned queries and the frame's own change pick the regions where something is or
moves; where that change sits, and how it shifts from frame to frame, is given to the model as numbers; a
transformer then relates the frames.

An event is about one object in a few regions: a frame pooled to one vector blurs it into the background,
and full space-time attention over every region of every frame is slow and over-fits small clip sets.
Each region token already carries what is there, how it changed since the previous frame (`frame_diff`),
where it is (2D sine-cosine positions) and when, all added by `MediaEncoder.encode_video`, which also
hands over each region's raw change (the norm of its feature difference to the previous frame).
Per frame:
- `slots` learned queries attend over its regions (what is where);
- a change slot pools the regions by their change (softmax of a learned scale times the log change): the
  features of what just moved, appeared or changed colour;
- the change's centroid (x, y in [0, 1]), its spread and its log total, and the centroid's shift since the
  previous frame: an optical-flow-like summary (a shape entering from the left moves right).
The slots and the motion numbers join into one frame token; a transformer over time tells in from out.
Cost: T * R * (slots + 1) for the pooling, T^2 for time.

Example:
    >>> from polymodal.nn.media import MediaConfig
    >>> model = MotionSlots(MediaConfig(dim=32, heads=4, temporal_layers=2))
    >>> model(torch.zeros(2, 8, 16, 32), change=torch.rand(2, 8, 16)).shape  # (B, T, R, D) -> (B, T, D)
    torch.Size([2, 8, 32])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .media import MediaConfig

MOTION_NUMBERS = 7  # centroid x, y; spread x, y; log total change; centroid shift x, y


def change_summary(change: torch.Tensor) -> torch.Tensor:
    """Per frame, where its change is: (B, T, R) region change on a square grid -> (B, T, 7) centroid (x, y in
    [0, 1]), spread (x, y), log total change, and the centroid's shift since the previous frame.

    Example:
        >>> change = torch.zeros(1, 2, 4)  # a 2 x 2 grid: the change moves from top-left to top-right
        >>> change[0, 0, 0], change[0, 1, 1] = 1.0, 1.0
        >>> change_summary(change)[0, 1, [0, 1, 5, 6]].tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    b, t, r = change.shape
    side = math.isqrt(r)
    coords = torch.linspace(0, 1, side, device=change.device) if side > 1 else change.new_zeros(1)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    total = change.sum(-1, keepdim=True)
    w = change / total.clamp_min(1e-6)
    cx, cy = (w * xs).sum(-1), (w * ys).sum(-1)
    sx = ((w * (xs - cx[..., None]) ** 2).sum(-1) + 1e-8).sqrt()  # + eps: finite gradient at 0
    sy = ((w * (ys - cy[..., None]) ** 2).sum(-1) + 1e-8).sqrt()
    centre = torch.stack([cx, cy], -1)
    shift = centre - torch.cat([centre[:, :1], centre[:, :-1]], dim=1)
    return torch.cat([centre, torch.stack([sx, sy], -1), total.log1p(), shift], dim=-1)


class MotionSlots(nn.Module):
    """(B, T, R, D) region tokens (+ (B, T, R) change) -> query and change slots + motion numbers per frame
    -> temporal transformer -> (B, T, D)."""

    per_region = True   # MediaEncoder hands this model every region as a token
    uses_change = True  # ... and each region's change since the previous frame

    def __init__(self, cfg: MediaConfig, slots: int = 2):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, slots, cfg.dim) * 0.02)
        self.region_norm = nn.LayerNorm(cfg.dim)
        self.pool = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.change_scale = nn.Parameter(torch.tensor(2.0))
        self.motion = nn.Linear(MOTION_NUMBERS, cfg.dim)
        self.join = nn.Linear((slots + 1) * cfg.dim, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.time = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, change: torch.Tensor | None = None) -> torch.Tensor:
        b, t, r, d = x.shape
        change = x.new_zeros(b, t, r) if change is None else change.float()
        regions = self.region_norm(x)
        slots, _ = self.pool(self.queries.expand(b * t, -1, -1), regions.reshape(b * t, r, d),
                             regions.reshape(b * t, r, d))  # (B*T, S, D)
        weight = (self.change_scale * change.clamp_min(0).log1p()).softmax(-1)  # (B, T, R)
        moved = (weight[..., None] * regions).sum(2)  # (B, T, D): what changed
        frames = self.join(torch.cat([slots.reshape(b, t, -1), moved], -1)) + self.motion(change_summary(change))
        return self.norm(self.time(frames))


def motion_slots(cfg: MediaConfig) -> nn.Module:
    return MotionSlots(cfg)
