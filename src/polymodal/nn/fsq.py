"""Finite scalar quantization (FSQ; Mentzer et al. 2023): a codebook with nothing to learn or collapse.

Each of d channels is squashed into a bounded range and rounded to one of `levels[i]` values (straight-through
gradient); a code is the tuple of the d rounded values, so the codebook is their product (levels (8, 5, 5, 5)
-> 1000 codes) and every code is used without the commitment losses and restarts a VQ-VAE needs.

Example:
    >>> fsq = FSQ((8, 5, 5, 5))
    >>> fsq.codebook_size
    1000
    >>> z = torch.randn(2, 4, 3, 3)               # (B, d, H, W) from an encoder
    >>> q, ids = fsq(z)                           # quantized (B, d, H, W) in [-1, 1], code ids (B, H, W)
    >>> torch.equal(fsq.codes_to_values(ids), q)  # ids alone give the quantized values back
    True
"""

from __future__ import annotations

import torch
from torch import nn


class FSQ(nn.Module):
    """Channels (B, d, ...) -> quantized values in [-1, 1] and integer code ids (B, ...)."""

    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be >= 2 each, got {levels}")
        self.levels = tuple(int(n) for n in levels)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1, *self.levels[:-1])), 0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self.eps = eps

    @property
    def codebook_size(self) -> int:
        return int(torch.tensor(self.levels).prod())

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(1, -1, *([1] * (ndim - 2)))  # broadcast over (B, d, ...)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into (-L/2, L/2) so rounding gives exactly L values (even L: shifted by 1/2)."""
        lv = self._view(self._levels, z.dim())
        half = (lv - 1) * (1 - self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = torch.atanh((offset / half).clamp(max=1 - self.eps))  # z = 0 lands mid-range (L = 2: nearly)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounded = self.bound(z.float())
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through estimator
        half_width = self._view(torch.div(self._levels, 2, rounding_mode="floor"), z.dim())
        digits = (rounded.detach() + half_width).long()  # 0 .. L-1 per channel
        ids = (digits * self._view(self._basis, z.dim())).sum(1)
        return rounded / half_width, ids

    def codes_to_values(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids (B, ...) -> quantized values (B, d, ...) in [-1, 1]."""
        digits = torch.div(ids.unsqueeze(1), self._view(self._basis, ids.dim() + 1), rounding_mode="floor")
        digits = digits % self._view(self._levels.long(), ids.dim() + 1)
        half_width = self._view(torch.div(self._levels, 2, rounding_mode="floor"), ids.dim() + 1)
        return (digits.float() - half_width) / half_width
