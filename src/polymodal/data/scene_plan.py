"""A scene plan: what a text -> image generator decides before it draws (LayoutGPT; LLM-grounded diffusion).

    <bg3> <obj> small red circle <w12> <h12> <x20> <y40> <obj> large blue square <w21> <h21> <x45> <y40> <eos>

One background token (the nearest of a few fitted shades), then per object its phrase (words of the caption
vocabulary), its box's width and height, then its centre, all on a GRID x GRID raster. Objects come in the order
the caption names them (`mention_order`; those it does not name after, left to right), so that writing the plan
copies the caption's phrases in order: "a yellow triangle above a white hexagon" plans the triangle first
whichever is further left. Sizes come before the centre so that a layout box can keep the whole object inside it
when the centre is chosen (models/plan_grammar.py).

Shapes World scenes give plans directly (`scene_plan`: each object's bounding square); a generator writes them
from a caption and a renderer draws them (models/scene_image_generator.py).

Example:
    >>> from polymodal.data.shapes import Scene, ShapeObject
    >>> plan = scene_plan(Scene((ShapeObject("circle", "red", "small", 0.25, 0.5),), (40, 40, 40)), [30.0, 50.0])
    >>> " ".join(plan_words(plan))
    '<bg0> <obj> small red circle <w12> <h12> <x16> <y32>'
    >>> parse_plan(plan_words(plan)) == plan
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data.shapes import Scene
from ..text.tokenizer import split_words

GRID = 64  # one step of the raster is one pixel at 64 px
MAX_PHRASE = 4  # words naming one object


@dataclass(frozen=True)
class PlannedObject:
    """An object of a plan: the words that name it and its box (centre x, centre y, width, height in [0, 1])
    as raster steps (`w` and `h` in 0..grid-1 stand for (w + 1) / grid; `x`, `y` for the cell's centre)."""

    phrase: tuple[str, ...]
    w: int
    h: int
    x: int
    y: int

    def box(self, grid: int = GRID) -> tuple[float, float, float, float]:
        """(centre x, centre y, width, height) as fractions of the image side."""
        return (self.x + 0.5) / grid, (self.y + 0.5) / grid, (self.w + 1) / grid, (self.h + 1) / grid


@dataclass(frozen=True)
class ScenePlan:
    background: int
    objects: tuple[PlannedObject, ...]


def plan_tokens(grid: int = GRID, backgrounds: int = 8) -> list[str]:
    """Every token a plan is written with besides the phrase words."""
    return ["<obj>", *(f"<bg{i}>" for i in range(backgrounds)),
            *(f"<{axis}{i}>" for axis in "whxy" for i in range(grid))]


def _bin(value: float, grid: int) -> int:
    return min(max(int(value * grid), 0), grid - 1)


def planned_object(phrase: Sequence[str], cx: float, cy: float, w: float, h: float, grid: int = GRID) -> PlannedObject:
    """An object named by `phrase` with its box (centre, width, height as fractions of the side) on the raster."""
    def extent(v: float) -> int:
        return min(max(round(v * grid) - 1, 0), grid - 1)

    return PlannedObject(tuple(phrase), extent(w), extent(h), _bin(cx, grid), _bin(cy, grid))


def background_level(rgb: Sequence[float], levels: Sequence[float]) -> int:
    """The index of the shade in `levels` (0-255 grays) nearest the colour's mean."""
    mean = sum(rgb) / len(rgb)
    return min(range(len(levels)), key=lambda i: abs(levels[i] - mean))


def fit_levels(backgrounds: Sequence[Sequence[float]], k: int) -> list[float]:
    """k background shades (0-255) at evenly spaced quantiles of the backgrounds' mean brightness."""
    means = sorted(sum(rgb) / len(rgb) for rgb in backgrounds)
    return [round(means[min(int((i + 0.5) / k * len(means)), len(means) - 1)], 2) for i in range(k)]


@dataclass(frozen=True)
class BoxedObject:
    """An annotated object, as plans are made from: the words that name it and its box (centre x, centre y, width,
    height as fractions of the image side, y down)."""

    phrase: tuple[str, ...]
    cx: float
    cy: float
    w: float
    h: float


def shape_objects(scene: Scene) -> list[BoxedObject]:
    """A Shapes World scene's objects: "small red circle" and its bounding square."""
    return [BoxedObject((o.size, o.colour, o.shape), o.x, o.y, 2 * o.radius, 2 * o.radius) for o in scene.objects]


def _find(words: Sequence[str], phrase: Sequence[str], taken: set[int]) -> int | None:
    """Where the caption names an object first (at a word not `taken`): its whole phrase, else its last two words
    ("red circle" for "small red circle"), else None."""
    for part in dict.fromkeys((tuple(phrase), tuple(phrase[-2:]))):
        n = len(part)
        for i in range(len(words) - n + 1):
            if tuple(words[i:i + n]) == part and i + n - 1 not in taken:
                return i + n - 1
    return None


def mention_order(objects: Sequence[BoxedObject], caption: str) -> list[BoxedObject]:
    """The objects in the order `caption` names them; objects it does not name after those, left to right.

    Example:
        >>> a, b = BoxedObject(("red", "circle"), 0.2, 0.6, 0.2, 0.2), BoxedObject(("blue", "square"), 0.7, 0.2, 0.3, 0.3)
        >>> [o.phrase[1] for o in mention_order([a, b], "a blue square above a red circle")]
        ['square', 'circle']
    """
    words, taken, at = split_words(caption), set(), {}
    reading = sorted(range(len(objects)), key=lambda k: (objects[k].cx, objects[k].cy))
    for k in reading:
        i = _find(words, objects[k].phrase, taken)
        if i is not None:
            taken.add(i)
            at[k] = i
    return [objects[k] for k in sorted(at, key=at.get)] + [objects[k] for k in reading if k not in at]


def plan_of(objects: Sequence[BoxedObject], background: int, caption: str = "", grid: int = GRID,
            max_objects: int | None = None) -> ScenePlan:
    """The plan of annotated objects: in the order `caption` names them (left to right without one), the first
    `max_objects` of them."""
    ordered = mention_order(objects, caption)[:max_objects]
    return ScenePlan(background, tuple(planned_object(o.phrase, o.cx, o.cy, o.w, o.h, grid) for o in ordered))


def scene_plan(scene: Scene, levels: Sequence[float], grid: int = GRID, caption: str = "") -> ScenePlan:
    """A Shapes World scene's plan: each object's words ("small red circle") and bounding square, in the order
    `caption` names them (left to right without one)."""
    return plan_of(shape_objects(scene), background_level(scene.background, levels), caption, grid)


def plan_words(plan: ScenePlan) -> list[str]:
    """The plan as tokens (without the closing <eos>)."""
    words = [f"<bg{plan.background}>"]
    for o in plan.objects:
        words += ["<obj>", *o.phrase, f"<w{o.w}>", f"<h{o.h}>", f"<x{o.x}>", f"<y{o.y}>"]
    return words


def coordinate_token(word: str) -> tuple[str, int] | None:
    """("x", 20) for "<x20>" (any of w, h, x, y); None for any other token."""
    if len(word) > 3 and word[0] == "<" and word[-1] == ">" and word[1] in "whxy" and word[2:-1].isdigit():
        return word[1], int(word[2:-1])
    return None


def background_token(word: str) -> int | None:
    """3 for "<bg3>"; None for any other token."""
    return int(word[3:-1]) if word.startswith("<bg") and word.endswith(">") and word[3:-1].isdigit() else None


def parse_plan(words: Sequence[str]) -> ScenePlan:
    """Tokens -> plan; ValueError for tokens out of the grammar (decoding under models/plan_grammar.py never
    writes such)."""
    background = background_token(words[0]) if words else None
    if background is None:
        raise ValueError(f"a plan starts with its background token, got {list(words[:1])}")
    objects, i = [], 1
    while i < len(words):
        if words[i] != "<obj>":
            raise ValueError(f"expected <obj> at token {i}, got {words[i]!r}")
        j = i + 1
        while j < len(words) and coordinate_token(words[j]) is None and words[j] != "<obj>":
            j += 1
        fields = [coordinate_token(w) for w in words[j:j + 4]]
        if j == i + 1 or [f[0] if f else None for f in fields] != list("whxy"):
            raise ValueError(f"object at token {i} needs words, then <w> <h> <x> <y>; got {list(words[i:j + 4])}")
        objects.append(PlannedObject(tuple(words[i + 1:j]), *(f[1] for f in fields)))  # type: ignore[index]
        i = j + 4
    return ScenePlan(background, tuple(objects))
