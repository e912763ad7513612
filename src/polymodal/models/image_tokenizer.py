"""Image tokenizer: a convolutional autoencoder whose bottleneck is FSQ codes, so an image is a grid of tokens.

    image (B, 3, S, S) in [-1, 1] -> encoder (strided convs, residual blocks) -> (B, G * d, S/f, S/f)
      -> FSQ (nn/fsq.py), G codes per cell -> image tokens (B, (S/f)^2 * G) -> decoder (upsampling convs) -> image

`f` = patch x 2^(levels of `channels` - 1): 64 px, patch 2 and 3 levels -> an 8 x 8 grid; with G = 2 codes per cell
(each from its own range of ids) that is 128 tokens per image, which a decoder-only LM then learns to write after a
caption (models/token_image_generator.py; Parti / Chameleon). Trained on reconstruction alone (MSE + L1, pixels of
objects weighted up): the images here are flat colours on a plain background, so no perceptual or adversarial loss
is needed; real photos would want both (VQGAN).

Example:
    >>> cfg = ImageTokenizerConfig(image_size=16, patch=1, channels=(8, 16), levels=(5, 5))
    >>> tok = ImageTokenizer(cfg)
    >>> tokens = tok.encode(torch.zeros(2, 3, 16, 16))  # an 8 x 8 grid of codes, row by row
    >>> tokens.shape, tok.grid, tok.vocab_size
    (torch.Size([2, 64]), 8, 25)
    >>> tok.decode(tokens).shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nn.fsq import FSQ
from .base import SavedModel


@dataclass
class ImageTokenizerConfig:
    image_size: int = 64
    patch: int = 2                                  # fold p x p pixels into channels first (pixel unshuffle)
    channels: tuple[int, ...] = (32, 64, 128)       # per resolution after the fold; each next halves it
    levels: tuple[int, ...] = (8, 5, 5, 5)          # FSQ levels per code channel: 1000 codes
    codes_per_cell: int = 1                         # tokens per grid cell, each its own FSQ code (more detail)
    foreground_weight: float = 0.0                  # extra loss weight on pixels unlike the image's border colour
    groups: int = 8                                 # GroupNorm groups (divide every width)

    def __post_init__(self) -> None:
        factor = self.patch * 2 ** (len(self.channels) - 1) if self.channels else 0
        if not self.channels or self.image_size % factor:
            raise ConfigError(f"image tokenizer: image_size {self.image_size} must divide by patch x 2^(len(channels)-1) "
                              f"= {factor}")
        if any(c % self.groups for c in self.channels):
            raise ConfigError(f"image tokenizer: every channel width {self.channels} must divide by groups "
                              f"{self.groups}")

    @property
    def grid(self) -> int:
        """Codes per side: image_size / (patch x 2^(levels - 1))."""
        return self.image_size // (self.patch * 2 ** (len(self.channels) - 1))

    @property
    def tokens(self) -> int:
        """Image tokens per image: grid cells x codes per cell."""
        return self.grid * self.grid * self.codes_per_cell


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the input (projected when the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                 nn.GroupNorm(groups, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.net(x)


class ImageTokenizer(SavedModel, nn.Module):
    """encode: images -> image tokens (B, T); decode: tokens -> images; forward: the reconstruction loss."""

    architecture, config_cls = "image_tokenizer", ImageTokenizerConfig
    needs_tokenizer = False  # images only: no word vocabulary

    def __init__(self, cfg: ImageTokenizerConfig, tokenizer: None = None, with_encoder: bool = True):
        super().__init__()
        self.cfg, self.tokenizer = cfg, None
        chs, g, p = cfg.channels, cfg.groups, cfg.patch
        self.quantizer = FSQ(cfg.levels)
        code_channels = len(cfg.levels) * cfg.codes_per_cell
        # A generator only decodes: without the encoder it carries (and ships) half the weights.
        self.encoder = self._encoder(chs, g, p, code_channels) if with_encoder else None
        up: list[nn.Module] = [nn.Conv2d(code_channels, chs[-1], 3, padding=1), ResBlock(chs[-1], chs[-1], g)]
        for i in reversed(range(len(chs))):
            up.append(ResBlock(chs[min(i + 1, len(chs) - 1)], chs[i], g))
            if i > 0:
                up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chs[i], chs[i], 3, padding=1)]
        up += [nn.GroupNorm(g, chs[0]), nn.SiLU(), nn.Conv2d(chs[0], 3 * p * p, 3, padding=1), nn.PixelShuffle(p)]
        self.decoder = nn.Sequential(*up)

    @staticmethod
    def _encoder(chs: tuple[int, ...], g: int, p: int, code_channels: int) -> nn.Sequential:
        down: list[nn.Module] = [nn.PixelUnshuffle(p), nn.Conv2d(3 * p * p, chs[0], 3, padding=1)]
        for i, ch in enumerate(chs):
            down.append(ResBlock(ch, ch, g))
            if i < len(chs) - 1:
                down.append(nn.Conv2d(ch, chs[i + 1], 3, stride=2, padding=1))
        down += [ResBlock(chs[-1], chs[-1], g), nn.GroupNorm(g, chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], code_channels, 1)]
        return nn.Sequential(*down)

    @property
    def grid(self) -> int:
        return self.cfg.grid

    @property
    def codebook_size(self) -> int:
        """Codes of one FSQ group."""
        return self.quantizer.codebook_size

    @property
    def vocab_size(self) -> int:
        """Distinct image tokens: each of a cell's `codes_per_cell` codes has its own range of ids."""
        return self.codebook_size * self.cfg.codes_per_cell

    @property
    def tokens(self) -> int:
        return self.cfg.tokens

    def quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S) in [-1, 1] -> quantized values (B, G * d, g, g) and tokens (B, g * g * G)."""
        if self.encoder is None:
            raise ConfigError("this image tokenizer was built without its encoder (a generator's): it only decodes")
        if images.shape[-1] != self.cfg.image_size or images.shape[-2] != self.cfg.image_size:
            raise ConfigError(f"image tokenizer: images of {tuple(images.shape[-2:])} px, the tokenizer takes "
                              f"{self.cfg.image_size} x {self.cfg.image_size}")
        z = self.encoder(images)
        b, _, h, w = z.shape
        values, ids = self.quantizer(z.view(b * self.cfg.codes_per_cell, -1, h, w))  # each group its own code
        ids = ids.view(b, self.cfg.codes_per_cell, h, w) + self._offsets()
        return values.view(b, -1, h, w), ids.permute(0, 2, 3, 1).reshape(b, -1)  # row by row, a cell's codes together

    def _offsets(self) -> torch.Tensor:
        return (torch.arange(self.cfg.codes_per_cell) * self.codebook_size).view(1, -1, 1, 1).to(self.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> image tokens (B, T) in [0, vocab_size), T = `tokens`."""
        return self.quantize(images)[1]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, T) -> images (B, 3, S, S), about [-1, 1] (clamp before showing)."""
        b, g, k = tokens.shape[0], self.grid, self.cfg.codes_per_cell
        ids = tokens.view(b, g, g, k).permute(0, 3, 1, 2) - self._offsets()  # (B, G, g, g)
        values = self.quantizer.codes_to_values(ids.reshape(b * k, g, g))  # (B * G, d, g, g)
        return self.decoder(values.reshape(b, -1, g, g))  # codes_to_values may give a non-contiguous view

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction loss of batch["pixels"] (B, 3, S, S) in [-1, 1]: MSE + L1, objects weighted up."""
        x = batch["pixels"]
        values, _ = self.quantize(x)
        out = self.decoder(values)
        weight = 1.0 + self.cfg.foreground_weight * foreground(x)
        mse, l1 = F.mse_loss(out, x), F.l1_loss(out, x)
        loss = (weight * ((out - x) ** 2 + (out - x).abs())).mean() / weight.mean()
        return out, {"loss": loss, "mse": mse.detach(), "l1": l1.detach()}


def foreground(pixels: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """(B, 1, S, S) 1 where a pixel differs from its image's border colour (the median of the edge pixels).

    Small objects are a few percent of the pixels, so a plain average lets their outlines blur; weighting them up
    keeps the shapes that captions name. Example:
        >>> x = -torch.ones(1, 3, 8, 8); x[:, :, 3:5, 3:5] = 1.0
        >>> int(foreground(x).sum())
        4
    """
    edge = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
    background = edge.median(dim=-1).values[..., None, None]  # (B, 3, 1, 1)
    return ((pixels - background).abs().amax(1, keepdim=True) > threshold).float()
