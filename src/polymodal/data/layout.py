"""The layout box of a text -> image prompt: "draw it in this box", as a few tokens after the caption.

    "a small red circle" + box (0.1, 0.5, 0.4, 0.9) -> <bos> a small red circle <box> <x0> <y4> <x3> <y7> <eos>

The box is read on a GRID x GRID raster (the cells its corners fall in). A generator trained with layouts
(configs/text_to_image_layout.yaml) learns it from Shapes World scenes, whose box is the one that holds every
object of the scene (`objects_box`); a single object's prompt then asks for that object in the box. As GLIGEN
grounds phrases in boxes, but with one box for the whole prompt and as tokens of the generator's own LM.

The box is also kept when sampling: outside it only image codes that draw background may be written
(`background_codes`, fitted on the training scenes: the codes of cells no object touches), so an object
cannot be started there, the way banned words keep a caption from saying a word.

Example:
    >>> box_words((0.1, 0.5, 0.4, 0.9))
    ['<box>', '<x0>', '<y4>', '<x3>', '<y7>']
    >>> check_box((0.5, 0.5, 0.5, 0.9))
    Traceback (most recent call last):
    ...
    polymodal.errors.InputError: box (0.5, 0.5, 0.5, 0.9) has zero area; give x0,y0,x1,y1 in [0, 1] with x1 > x0 and y1 > y0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from .caption_controls import unit_coordinate
from .shapes import ShapeObject

GRID = 8  # as the focus grid: a cell (1/8 of the side) is about a small object's radius


def layout_tokens(grid: int = GRID) -> list[str]:
    """The tokens a layout box is written with: <box>, then a corner's column <xI> and row <yJ>, twice."""
    return ["<box>", *(f"<x{i}>" for i in range(grid)), *(f"<y{i}>" for i in range(grid))]


def check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in [0, 1] with some area, as floats; InputError (one line) otherwise."""
    if len(box) != 4:
        raise InputError(f"box needs 4 numbers x0,y0,x1,y1 in [0, 1], got {len(box)}")
    x0, y0, x1, y1 = (unit_coordinate(v, "box coordinate") for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {tuple(box)} has zero area; give x0,y0,x1,y1 in [0, 1] with x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def box_cells(box: Sequence[float], grid: int = GRID) -> tuple[int, int, int, int]:
    """The grid cells (column, row) of a box's top-left and bottom-right corners: the box as the generator reads it."""
    x0, y0, x1, y1 = check_box(box)

    def cell(v: float) -> int:
        return min(int(v * grid), grid - 1)

    # the far corner's cell is the last one the box reaches into (a box ending on a cell border stops before it)
    return cell(x0), cell(y0), max(cell(x1 - 1e-6), cell(x0)), max(cell(y1 - 1e-6), cell(y0))


def box_words(box: Sequence[float], grid: int = GRID) -> list[str]:
    """The layout tokens of a box: <box>, then the cells of its top-left and bottom-right corners."""
    a, b, c, d = box_cells(box, grid)
    return ["<box>", f"<x{a}>", f"<y{b}>", f"<x{c}>", f"<y{d}>"]


def objects_box(objects: Sequence[ShapeObject]) -> tuple[float, float, float, float]:
    """The box that holds every object (their bounding squares: a scene's layout), clipped to the image."""
    return (max(min(o.x - o.radius for o in objects), 0.0), max(min(o.y - o.radius for o in objects), 0.0),
            min(max(o.x + o.radius for o in objects), 1.0), min(max(o.y + o.radius for o in objects), 1.0))


def inside(x: float, y: float, box: Sequence[float], grid: int = GRID) -> bool:
    """Whether a point lies in the box as the generator reads it (its corners' cells, whole)."""
    a, b, c, d = box_cells(box, grid)
    return a / grid <= x <= (c + 1) / grid and b / grid <= y <= (d + 1) / grid


def cells_reached(left: float, top: float, right: float, bottom: float, grid: int) -> list[bool]:
    """Per cell of a grid x grid raster (row-major): True where the rectangle reaches into the cell (more than
    touching its border)."""
    return [left < (k + 1) / grid and right > k / grid and top < (r + 1) / grid and bottom > r / grid
            for r in range(grid) for k in range(grid)]


def untouched_cells(objects: Sequence[ShapeObject], grid: int) -> list[bool]:
    """Per cell of a grid x grid raster (row-major): True where no object's bounding square reaches into it."""
    reached = [cells_reached(o.x - o.radius, o.y - o.radius, o.x + o.radius, o.y + o.radius, grid) for o in objects]
    return [not any(cell) for cell in zip(*reached, strict=True)] if reached else [True] * grid * grid


def background_codes(codes: torch.Tensor, scenes: Sequence[Sequence[ShapeObject]], grid: int, codes_per_cell: int,
                     vocab: int, min_count: int = 1, purity: float = 3.0) -> list[list[int]]:
    """Per code slot of a cell, the image codes that draw background: seen in cells no object touches at least
    `min_count` times and `purity` times as often as in cells an object touches. `codes` (N, grid^2 * slots)
    are the training images' tokens (row-major cells, a cell's slots together), `scenes` their objects.

    Example:
        >>> one = [ShapeObject("circle", "red", "small", 0.1, 0.1)]  # reaches into cell 0 of a 2 x 2 grid
        >>> background_codes(torch.tensor([[5, 1, 1, 1], [5, 1, 2, 1]]), [one, one], 2, 1, 8)
        [[1, 2]]
    """
    seen = torch.zeros(2, codes_per_cell, vocab)  # [untouched, touched] counts per slot and code
    cells = codes.view(len(codes), grid * grid, codes_per_cell)
    for image, objects in zip(cells, scenes, strict=True):
        touched = 1 - torch.tensor(untouched_cells(objects, grid), dtype=torch.long)
        for slot in range(codes_per_cell):
            seen[:, slot].index_put_((touched, image[:, slot]), torch.ones(len(image)), accumulate=True)
    free, busy = seen[0], seen[1]
    allowed = (free >= min_count) & (free >= purity * busy)
    return [torch.nonzero(row).flatten().tolist() for row in allowed]


def outside_cells(box: Sequence[float], box_grid: int, grid: int) -> list[bool]:
    """Per cell of a grid x grid raster: True where the cell lies wholly outside the box as the generator reads it
    (its corners' cells on the box_grid raster)."""
    a, b, c, d = box_cells(box, box_grid)
    reached = cells_reached(a / box_grid, b / box_grid, (c + 1) / box_grid, (d + 1) / box_grid, grid)
    return [not cell for cell in reached]
