"""A small conditional U-Net for image generation: noisy image + time + text tokens -> velocity.

The image is first folded into `patch` x `patch` pixel blocks (pixel unshuffle), so a 64 px image is
processed on a 32 x 32 grid at the cost of a 32 px network and unfolded again at the end. Two coordinate
channels are appended to the input, because "to the left of" needs to know where the left is.
Each level has residual blocks whose GroupNorm output is scaled and shifted by the time + pooled-text
embedding (FiLM); the levels marked in `attention` add self-attention over the grid and
cross-attention to the caption's token features (as in Stable Diffusion's U-Net, much smaller).

Example:
    >>> net = UNet(UNetConfig(channels=(8, 16), attention=(False, True), heads=2), in_channels=3, context_dim=12)
    >>> x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    >>> context, mask, pooled = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 12)
    >>> net(x, t, context, mask, pooled).shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class UNetConfig:
    channels: tuple[int, ...] = (32, 64, 128)          # width per level; each level halves the grid
    attention: tuple[bool, ...] = (False, True, True)   # levels with self- and cross-attention
    heads: int = 4
    patch: int = 2                                      # pixel unshuffle factor before the first level
    groups: int = 8                                     # GroupNorm groups (divide every width)

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention) or not self.channels:
            raise ConfigError(f"unet: channels {self.channels} and attention {self.attention} need the same, "
                              f"non-zero length (one entry per level)")
        if any(c % self.groups or c % self.heads for c in self.channels):
            raise ConfigError(f"unet: every width in {self.channels} must divide by groups={self.groups} "
                              f"and heads={self.heads}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1]: (B,) -> (B, dim) (Transformer positions, scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class UNetResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm modulated by the conditioning embedding (FiLM)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UNetAttention(nn.Module):
    """Self-attention over the grid, then cross-attention from each cell to the caption tokens."""

    def __init__(self, ch: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.self_out = nn.Linear(ch, ch)
        self.cross_norm = nn.LayerNorm(ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.cross_out = nn.Linear(ch, ch)
        for out in (self.self_out, self.cross_out):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # (B, H, N, C/H)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (self._split(z) for z in self.qkv(h).chunk(3, dim=-1))
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, hgt * wid, c)
        seq = x.flatten(2).transpose(1, 2) + self.self_out(h)  # (B, HW, C)
        q = self._split(self.q(self.cross_norm(seq)))
        k, v = (self._split(z) for z in self.kv(context).chunk(2, dim=-1))  # (B, H, T, C/H)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, T): True = a real token; one mask, no is_causal
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(b, hgt * wid, c)
        seq = seq + self.cross_out(h)
        return seq.transpose(1, 2).reshape(b, c, hgt, wid)


class UNetLevel(nn.Module):
    """One resolution of the U-Net: a residual block and, where configured, attention."""

    def __init__(self, cin: int, cout: int, emb_dim: int, context_dim: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.block = UNetResBlock(cin, cout, emb_dim, cfg.groups)
        self.attn = UNetAttention(cout, context_dim, cfg.heads, cfg.groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.block(x, emb)
        return self.attn(x, context, mask) if self.attn is not None else x


class UNet(nn.Module):
    """Velocity (or noise) prediction network: (x, t, context tokens, mask, pooled text) -> same shape as x."""

    def __init__(self, cfg: UNetConfig, in_channels: int, context_dim: int):
        super().__init__()
        self.cfg = cfg
        chs, p = cfg.channels, cfg.patch
        emb_dim = 4 * chs[0]
        self.time_dim = chs[0]
        self.emb = nn.Sequential(nn.Linear(chs[0] + context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels * p * p + 2, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, (ch, attn) in enumerate(zip(chs, cfg.attention, strict=True)):
            self.down.append(UNetLevel(chs[max(i - 1, 0)], ch, emb_dim, context_dim, attn, cfg))
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = UNetLevel(chs[-1], chs[-1], emb_dim, context_dim, True, cfg)
        self.up = nn.ModuleList()
        for i in reversed(range(len(chs))):
            cin = (chs[i + 1] if i < len(chs) - 1 else chs[-1]) + chs[i]  # upsampled + skip
            self.up.append(UNetLevel(cin, chs[i], emb_dim, context_dim, cfg.attention[i], cfg))
        self.out_norm = nn.GroupNorm(cfg.groups, chs[0])
        self.out = nn.Conv2d(chs[0], in_channels * p * p, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        if x.shape[-1] % (p * 2 ** (len(self.cfg.channels) - 1)):
            raise ConfigError(f"unet: image size {x.shape[-1]} must divide by patch x 2^(levels-1)")
        emb = self.emb(torch.cat([timestep_embedding(t, self.time_dim), pooled], dim=-1))  # (B, E)
        h = F.pixel_unshuffle(x, p) if p > 1 else x  # (B, 3p^2, S/p, S/p)
        b, _, gh, gw = h.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, gh, device=x.device), torch.linspace(-1, 1, gw, device=x.device),
                                indexing="ij")
        h = self.stem(torch.cat([h, xs.expand(b, 1, gh, gw), ys.expand(b, 1, gh, gw)], dim=1))
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, emb, context, mask)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb, context, mask)
        for level in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = level(torch.cat([h, skip], dim=1), emb, context, mask)
        h = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, p) if p > 1 else h
