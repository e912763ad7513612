"""The layout box of a text -> image prompt: "draw it in this box", as a few tokens after the caption.

    "a small red circle" + box (0.1, 0.5, 0.4, 0.9) -> <bos> a small red circle <box> <x0> <y4> <x3> <y7> <eos>

The box is read on a GRID x GRID raster (the cells its corners fall in). A generator trained with layouts
(configs/text_to_image_layout.yaml) learns it from Shapes World scenes, whose box is the one that holds every
object of the scene (`objects_box`); a single object's prompt then asks for that object in the box. As GLIGEN
grounds phrases in boxes, but with one box for the whole prompt and as tokens of the generator's own LM.

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
