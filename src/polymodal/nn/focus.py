"""The focus marker: a learnt vector added to the visual token under a focus point (a visual prompt, as ViP-LLaVA
draws marks on the image), so that a captioner asked `<focus> <x2> <y5>` need not work out which of its visual
tokens those words mean. Shared by the prefix LM and the encoder-decoder captioners.

Example:
    >>> import torch
    >>> cells = torch.full((6, 2), -1)
    >>> cells[4, 0], cells[5, 1] = 1, 0            # token 4 is <x1>, token 5 is <y0> on a 2 x 2 grid
    >>> visual = torch.zeros(1, 4, 3)              # a 2 x 2 grid of visual tokens
    >>> mark_focus(visual, torch.tensor([[4, 5]]), cells, 2, torch.ones(3))[0, :, 0].tolist()
    [0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def cell_lookup(tokenizer: Any, grid: int) -> torch.Tensor:
    """(V, 2): for each token id the grid x (column 0) or y (column 1) that a <xI> / <yJ> control token names,
    -1 elsewhere."""
    index = getattr(tokenizer, "index", {})
    out = torch.full((len(tokenizer), 2), -1, dtype=torch.long)
    for i in range(grid):
        for axis, name in enumerate((f"<x{i}>", f"<y{i}>")):
            if name in index:
                out[index[name], axis] = i
    return out


def mark_focus(visual: torch.Tensor, tokens: torch.Tensor, cell_of_token: torch.Tensor, grid: int,
               marker: torch.Tensor) -> torch.Tensor:
    """Add `marker` (D,) to the visual token (of a square grid, (B, N, D)) whose cell holds the focus point that
    the <xI> <yJ> tokens of `tokens` (B, L) name on a `grid` x `grid` raster; rows without one are unchanged."""
    cells = cell_of_token[tokens]  # (B, L, 2): the x / y index a token names, -1 elsewhere
    x, y = cells[..., 0].amax(1), cells[..., 1].amax(1)
    side = math.isqrt(visual.shape[1])
    if side * side != visual.shape[1]:
        raise ConfigError(f"a focus marker needs a square grid of visual tokens, got {visual.shape[1]}")
    index = (y * side // grid) * side + x * side // grid
    hit = F.one_hot(index.clamp(min=0), visual.shape[1]) * ((x >= 0) & (y >= 0))[:, None]
    return visual + hit[..., None].to(visual.dtype) * marker
