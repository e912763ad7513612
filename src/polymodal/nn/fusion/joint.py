"""Single-stream fusion: one transformer over the tokens of every modality ("merged attention").

VisualBERT, ViLT and METER's "merged attention" put question words and image regions into one
sequence, so every token attends to every other in every layer. `cross_attention` only lets words
read regions; here a region can also read the question and the other regions, which is what
"what is left of the square?" needs: the square's region is found through the question, and every
other region can compare its own (x, y) with it in the next layer.

tokens = [CLS] + proj_m(x_m) + type_m for every modality m (sequences or single vectors)
out    = MLP([CLS state; masked mean of every modality's output tokens])

The means ride along for the same reason as in `cross_attention`: softmax attention normalises
counts away, a mean keeps them.

Example:
    >>> from polymodal.nn.fusion.base import FusionConfig, build_fusion
    >>> f = build_fusion(FusionConfig(name="joint", dim=8, hidden=16, heads=2, layers=2), {"image": 4, "text": 6})
    >>> f({"image": torch.randn(2, 9, 4), "text": torch.randn(2, 5, 6)}).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...errors import ConfigError
from .base import Features, Fusion, FusionConfig, Masks, as_sequence, mlp, pool


class JointFusion(Fusion):
    """`layers` pre-norm transformer encoder layers over [CLS; tokens of every modality]."""

    min_modalities = 2

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        if cfg.dim % cfg.heads:
            raise ConfigError(f"fusion.dim ({cfg.dim}) must be divisible by fusion.heads ({cfg.heads})")
        self.proj = nn.ModuleDict({m: nn.Linear(d, cfg.dim) for m, d in self.dims.items()})
        self.type_embed = nn.Parameter(torch.randn(len(self.modalities), cfg.dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, max(cfg.layers, 1), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = mlp((1 + len(self.modalities)) * cfg.dim, cfg.hidden, cfg.dim, cfg.dropout)
        self.out_dim = cfg.dim

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        self._check(features)
        masks = masks or {}
        tokens, token_masks, lengths = [], [], []
        for i, m in enumerate(self.modalities):
            x, mask = as_sequence(features[m], masks.get(m))
            tokens.append(self.proj[m](x) + self.type_embed[i])
            token_masks.append(mask)
            lengths.append(x.shape[1])
        batch = tokens[0].shape[0]
        cls_mask = torch.ones(batch, 1, dtype=torch.bool, device=tokens[0].device)
        x = torch.cat([self.cls.expand(batch, -1, -1), *tokens], dim=1)
        mask = torch.cat([cls_mask, *token_masks], dim=1)
        h = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        parts = [h[:, 0]]
        for part, part_mask in zip(h[:, 1:].split(lengths, dim=1), token_masks, strict=True):
            parts.append(pool(part, part_mask))
        return torch.relu(self.out(torch.cat(parts, dim=-1)))
