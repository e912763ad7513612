"""The modality projector of an image-prefix LM (nanoVLM's): encoder regions -> the LM's visual tokens.

Pixel shuffle trades tokens for width (s x s neighbouring regions become one token), fixed 2D positions say
where each token sits, and a 2-layer MLP maps it to the LM's width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .transformer import grid_positions


def pixel_shuffle(regions: torch.Tensor, s: int) -> torch.Tensor:
    """(B, N, C) on a square grid -> (B, N / s^2, C * s^2): s x s neighbours become one token (nanoVLM).

    Example:
        >>> pixel_shuffle(torch.zeros(2, 64, 8), 2).shape
        torch.Size([2, 16, 32])
    """
    b, n, c = regions.shape
    side = math.isqrt(n)
    if side * side != n or side % s:
        raise ConfigError(f"pixel shuffle {s} needs a square grid whose side is divisible by {s}, got {n} "
                          f"regions; change prefix.pixel_shuffle or model.encoder.grid")
    x = regions.reshape(b, side // s, s, side // s, s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (side // s) ** 2, s * s * c)


class ModalityProjector(nn.Module):
    """Regions (B, N, C) -> visual tokens (B, N / s^2, D): pixel shuffle, 2D positions, a 2-layer MLP.

    Example:
        >>> ModalityProjector(8, 32, shuffle=2)(torch.zeros(2, 64, 8)).shape
        torch.Size([2, 16, 32])
    """

    def __init__(self, in_dim: int, dim: int, shuffle: int = 1, hidden: int = 0):
        super().__init__()
        self.shuffle = shuffle
        self.net = nn.Sequential(nn.Linear(in_dim * shuffle ** 2, hidden or dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden or dim, dim))

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(regions, self.shuffle) if self.shuffle > 1 else regions
        # CNN regions know little of where they are; "left of" and "above" need positions.
        x = x + grid_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        return self.net(x)
