"""Draw a scene plan: one learned sprite per object phrase, placed in its box and laid over a background.

    phrase ids (B, K, P) -> mean word embedding -> conv decoder -> sprite (RGB + alpha, R x R)
    box (centre, size)   -> affine grid (a spatial transformer) -> the sprite resampled into the S x S canvas
    canvas = background shade, then each object "over" it in plan order

The sprite depends on the phrase alone, so the network learns what "small red circle" looks like once, and
where it goes is exact: it is the box. This is the layered, sprite-based decoder of object-centric models
(Attend-Infer-Repeat, Eslami et al. 2016; DTI-Sprites, Monnier et al. 2021) driven by a plan instead of
inferred slots. A phrase's words are averaged, so colour and shape words that never met in training
still make a sprite (held-out compositions).

Example:
    >>> renderer = SpriteRenderer(SpriteConfig(dim=16, channels=(16, 8)), vocab=10, levels=[40.0])
    >>> images = renderer(torch.tensor([[[4, 5]]]), torch.tensor([[[0.5, 0.5, 0.3, 0.3]]]),
    ...                   torch.tensor([[True]]), torch.tensor([0]), size=16)
    >>> images.shape
    torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SpriteConfig:
    dim: int = 64                          # phrase embedding
    channels: tuple[int, ...] = (128, 64, 32, 32)  # decoder widths, from 4 x 4 doubling per stage
    margin: float = 1.25                   # the sprite spans this many times its box (anti-aliased edges, points)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)

    @property
    def sprite(self) -> int:
        """Sprite resolution: 4 x 4, doubled by each stage after the first."""
        return 4 * 2 ** (len(self.channels) - 1)


class SpriteRenderer(nn.Module):
    """(phrases, boxes, present, backgrounds) -> images in [-1, 1]."""

    def __init__(self, cfg: SpriteConfig, vocab: int, levels: Sequence[float], pad_id: int = 0):
        super().__init__()
        self.cfg, self.pad_id = cfg, pad_id
        self.embed = nn.Embedding(vocab, cfg.dim)
        c = cfg.channels
        self.to_grid = nn.Linear(cfg.dim, c[0] * 16)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1),
                          nn.GroupNorm(min(8, b), b), nn.SiLU())
            for a, b in zip(c[:-1], c[1:], strict=True))
        self.head = nn.Conv2d(c[-1], 4, 3, padding=1)
        self.background = nn.Embedding(len(levels), 3)  # one learned colour per shade, starting at that gray
        with torch.no_grad():
            self.background.weight.copy_((torch.tensor(levels, dtype=torch.float)[:, None] / 127.5 - 1).expand(-1, 3))

    def sprites(self, phrases: torch.Tensor) -> torch.Tensor:
        """Phrase ids (N, P), padded with pad_id -> RGBA sprites (N, 4, R, R): RGB in [-1, 1], alpha in [0, 1]."""
        real = (phrases != self.pad_id).float()
        z = (self.embed(phrases) * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        x = self.to_grid(z).view(len(z), -1, 4, 4)
        for stage in self.stages:
            x = stage(x)
        out = self.head(x)
        return torch.cat([out[:, :3].tanh(), out[:, 3:].sigmoid()], dim=1)

    def place(self, sprites: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """Sprites (N, 4, R, R) into S x S canvases at boxes (N, 4: centre x, centre y, width, height in [0, 1]);
        transparent outside the sprite."""
        scale = (boxes[:, 2:] * self.cfg.margin).clamp(min=1e-3)  # the sprite's half-extent in [-1, 1] units
        theta = torch.zeros(len(boxes), 2, 3, device=boxes.device, dtype=sprites.dtype)
        theta[:, 0, 0], theta[:, 1, 1] = 1 / scale[:, 0], 1 / scale[:, 1]
        theta[:, 0, 2], theta[:, 1, 2] = -(2 * boxes[:, 0] - 1) / scale[:, 0], -(2 * boxes[:, 1] - 1) / scale[:, 1]
        grid = F.affine_grid(theta, [len(boxes), 4, size, size], align_corners=False)
        return F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, phrases: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor, backgrounds: torch.Tensor,
                size: int) -> torch.Tensor:
        """phrases (B, K, P), boxes (B, K, 4), present (B, K) bool, backgrounds (B,) shade ids -> (B, 3, S, S)."""
        b, k, p = phrases.shape
        canvas = self.background(backgrounds)[:, :, None, None].expand(b, 3, size, size)
        if k == 0:
            return canvas.contiguous()
        unique, inverse = torch.unique(phrases.reshape(b * k, p), dim=0, return_inverse=True)  # draw each once
        sprites = self.sprites(unique)
        premultiplied = torch.cat([sprites[:, :3] * sprites[:, 3:], sprites[:, 3:]], dim=1)  # resamples cleanly
        layers = self.place(premultiplied[inverse], boxes.reshape(b * k, 4).float(), size)
        layers = layers.view(b, k, 4, size, size) * present.float()[..., None, None, None]
        for i in range(k):  # plan order: a later object is laid over an earlier one
            colour, alpha = layers[:, i, :3], layers[:, i, 3:]
            canvas = colour + (1 - alpha) * canvas
        return canvas
