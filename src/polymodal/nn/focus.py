"""Visual tokens under a point named by grid tokens, both ways:

- the focus marker: a learnt vector added to the visual token under a focus point (a visual prompt, as ViP-LLaVA
  draws marks on the image), so that a captioner asked `<focus> <x2> <y5>` need not work out which of its visual
  tokens those words mean. Shared by the prefix LM and the encoder-decoder captioners;
- the look-back: a reply that has just written a point `<gx3> <gy8>` gets the visual token under it added to its
  next input (`look_back`), so naming what it pointed at reads that token instead of searching the image again.

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


def cell_lookup(tokenizer: Any, grid: int, prefix: str = "<") -> torch.Tensor:
    """(V, 2): for each token id the grid x (column 0) or y (column 1) that a <xI> / <yJ> control token names
    (`prefix="<g"`: a reply's <gxI> / <gyJ> location token), -1 elsewhere."""
    index = getattr(tokenizer, "index", {})
    out = torch.full((len(tokenizer), 2), -1, dtype=torch.long)
    for i in range(grid):
        for axis, name in enumerate((f"{prefix}x{i}>", f"{prefix}y{i}>")):
            if name in index:
                out[index[name], axis] = i
    return out


def mark_focus(visual: torch.Tensor, tokens: torch.Tensor, cell_of_token: torch.Tensor, grid: int,
               marker: torch.Tensor) -> torch.Tensor:
    """Add `marker` (D,) to the visual token (of a square grid, (B, N, D)) whose cell holds the focus point that
    the <xI> <yJ> tokens of `tokens` (B, L) name on a `grid` x `grid` raster; rows without one are unchanged."""
    cells = cell_of_token[tokens]  # (B, L, 2): the x / y index a token names, -1 elsewhere
    x, y = cells[..., 0].amax(1), cells[..., 1].amax(1)
    index = _token_under(x, y, grid, _side(visual, "a focus marker"))
    hit = F.one_hot(index.clamp(min=0), visual.shape[1]) * ((x >= 0) & (y >= 0))[:, None]
    return visual + hit[..., None].to(visual.dtype) * marker


def look_back(visual: torch.Tensor, tokens: torch.Tensor, before: torch.Tensor | None, cell_of_token: torch.Tensor,
              grid: int, gate: torch.Tensor) -> torch.Tensor:
    """What the look-back adds to the inputs `tokens` (B, L): at each <gyJ> that follows a <gxI>, `gate` (D,) times
    the visual token (of a square grid, (B, N, D)) under that point of a `grid` x `grid` raster; 0 elsewhere.
    `before` (B,): the x index of the token before the first one (-1: none), for decoding a token at a time.

    Example:
        >>> cells = torch.full((6, 2), -1)
        >>> cells[4, 0], cells[5, 1] = 1, 1            # token 4 is <gx1>, token 5 is <gy1> on a 2 x 2 grid
        >>> visual = torch.arange(4.0).view(1, 4, 1)   # a 2 x 2 grid of visual tokens, numbered
        >>> look_back(visual, torch.tensor([[4, 5, 5]]), None, cells, 2, torch.ones(1))[0, :, 0].tolist()
        [0.0, 3.0, 0.0]
    """
    cells = cell_of_token[tokens]  # (B, L, 2)
    previous_x = torch.cat([(before if before is not None else cells.new_full((len(tokens),), -1))[:, None],
                            cells[:, :-1, 0]], dim=1)
    y = cells[..., 1]
    hit = (previous_x >= 0) & (y >= 0)
    # the token under the cell's centre (a 12-cell raster's cells straddle an 8 x 8 grid's)
    side = _side(visual, "the look-back")
    index = _token_under(2 * previous_x.clamp(min=0) + 1, 2 * y.clamp(min=0) + 1, 2 * grid, side)
    seen = visual.gather(1, index[..., None].expand(-1, -1, visual.shape[2]))  # (B, L, D)
    return seen * hit[..., None].to(visual.dtype) * gate


def _side(visual: torch.Tensor, what: str) -> int:
    side = math.isqrt(visual.shape[1])
    if side * side != visual.shape[1]:
        raise ConfigError(f"{what} needs a square grid of visual tokens, got {visual.shape[1]}")
    return side


def _token_under(x: torch.Tensor, y: torch.Tensor, grid: int, side: int) -> torch.Tensor:
    """The index of the visual token (row-major on a side x side grid) whose cell holds grid cell (x, y)."""
    return (y * side // grid) * side + x * side // grid
