"""Trained caption controls: the control prompt a captioner reads, and the captions it learns to give for it.

Three controls, each a few tokens placed between the image and <bos> (the prefix LM's `prompts`):

    length  <short> | <normal> | <detailed>   the objects alone / the canonical caption / every object with
                                             size, colour, shape and where it is
    form    <list> | <sentence>              the objects comma separated / one relational sentence
    focus   <focus> <x3> <y5>                the object at a point (or a box's centre), on a GRID x GRID grid
            <focus> red                      or the object a phrase names ("the red one")

On Shapes World the target captions are built from the scene annotations (the grammar of shapes_text.py);
on other data only `length` is trained, each reference labelled with its length tercile (`LengthBins`).

Example:
    >>> from polymodal.data.shapes import Scene, ShapeObject
    >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
    ...                ShapeObject("square", "blue", "large", 0.7, 0.3)), (40, 40, 40))
    >>> length_caption(scene, "short"), form_caption(scene, "list")
    ('a red circle and a blue square', 'a small red circle, a large blue square')
    >>> CaptionControls(focus_point=(0.2, 0.5)).prompt()
    ['<focus>', '<x1>', '<y4>']
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..text.tokenizer import split_words
from . import shapes_text as grammar
from .shapes import ATTRIBUTE_GROUPS, Scene, ShapeObject

LENGTHS = ("short", "normal", "detailed")
FORMS = ("list", "sentence")
KINDS = ("length", "form", "focus")
GRID = 8  # cell side 1/8 < the 0.22 that separates two object centres, so a cell holds at most one centre
PHRASE_GROUPS = ("colours", "shapes", "sizes")  # the words a focus phrase picks an object by


def control_tokens(grid: int = GRID) -> list[str]:
    """Every control token; `<...>` words that no caption text can produce (the word tokenizer drops `<`)."""
    return [*(f"<{v}>" for v in (*LENGTHS, *FORMS, "focus")), *(f"<x{i}>" for i in range(grid)),
            *(f"<y{i}>" for i in range(grid))]


def unit_coordinate(value: float, what: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{what} {value} is outside the image; give coordinates in [0, 1]")
    return float(value)


@dataclass(frozen=True)
class CaptionControls:
    """What a user asks of a caption; InputError on values that cannot be met (one line, names the control).

    Example:
        >>> CaptionControls(length="short").prompt()
        ['<short>']
        >>> CaptionControls(focus_box=(0.2, 0.2, 0.2, 0.6))
        Traceback (most recent call last):
        ...
        polymodal.errors.InputError: focus_box (0.2, 0.2, 0.2, 0.6) has zero area; give x0,y0,x1,y1 with x1 > x0 and y1 > y0
    """

    length: str | None = None
    form: str | None = None
    focus_point: tuple[float, float] | None = None
    focus_box: tuple[float, float, float, float] | None = None
    focus_phrase: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("length", LENGTHS), ("form", FORMS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise InputError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.focus_point is not None:
            if len(self.focus_point) != 2:
                raise InputError(f"focus_point needs 2 numbers x,y in [0, 1], got {len(self.focus_point)}")
            for v in self.focus_point:
                unit_coordinate(v, "focus_point coordinate")
        if self.focus_box is not None:
            if len(self.focus_box) != 4:
                raise InputError(f"focus_box needs 4 numbers x0,y0,x1,y1 in [0, 1], got {len(self.focus_box)}")
            x0, y0, x1, y1 = (unit_coordinate(v, "focus_box coordinate") for v in self.focus_box)
            if x1 <= x0 or y1 <= y0:
                raise InputError(f"focus_box {tuple(self.focus_box)} has zero area; give x0,y0,x1,y1 with x1 > x0 "
                                 f"and y1 > y0")
        if self.focus_phrase is not None and not phrase_words(self.focus_phrase):
            raise InputError(f"focus_phrase {self.focus_phrase!r} names no colour, shape or size; e.g. 'the red one'")
        focus = [n for n in ("focus_point", "focus_box", "focus_phrase") if getattr(self, n) is not None]
        if len(focus) > 1:
            raise InputError(f"{' and '.join(focus)} contradict: focus on one object, by one of them")
        if len(self.kinds) > 1:  # trained one at a time: "a short list" is a caption no model was taught
            raise InputError(f"the controls {', '.join(self.kinds)} cannot be combined; give one of them")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The controls asked for, e.g. ("length",); () for none."""
        focus = any(getattr(self, n) is not None for n in ("focus_point", "focus_box", "focus_phrase"))
        return tuple(k for k, on in zip(KINDS, (self.length, self.form, focus), strict=True) if on)

    def prompt(self, grid: int = GRID) -> list[str]:
        """The control prompt as words: control tokens, and a focus phrase's attribute words."""
        if self.length:
            return [f"<{self.length}>"]
        if self.form:
            return [f"<{self.form}>"]
        if self.focus_phrase is not None:
            return ["<focus>", *phrase_words(self.focus_phrase)]
        point = self.focus_point
        if self.focus_box is not None:
            x0, y0, x1, y1 = self.focus_box
            point = ((x0 + x1) / 2, (y0 + y1) / 2)
        return point_prompt(*point, grid) if point is not None else []


def with_phrase_words(force_words: Sequence[str], focus_phrase: str | None, strategy: str,
                      beam_size: int) -> list[str]:
    """`force_words` and the words a caption focused by a phrase must say: the phrase's own ("the red one" ->
    "red"), forced by constrained beam search (beam_size >= 2) so that the object described is the one the phrase
    names (docs/control.md: 88% -> 97% on Shapes World); none added without a phrase or for greedy decoding.

    Example:
        >>> with_phrase_words(["circle"], "the small red one", "beam", 3)
        ['circle', 'small', 'red']
    """
    said = phrase_words(focus_phrase) if focus_phrase is not None and strategy == "beam" and beam_size >= 2 else []
    return list(dict.fromkeys([*force_words, *said]))


def phrase_words(phrase: str) -> list[str]:
    """The colour, shape and size words of a focus phrase: "the red one" -> ["red"]."""
    known = {w for g in PHRASE_GROUPS for w in ATTRIBUTE_GROUPS[g]}
    return [w for w in words(phrase) if w in known]


def words(text: str) -> list[str]:
    """The text's words (the tokenizer's split), commas left out: what a length counts."""
    return [w for w in split_words(text) if w != ","]


def point_prompt(x: float, y: float, grid: int = GRID) -> list[str]:
    """<focus> and the grid cell of (x, y)."""
    cell = (min(int(x * grid), grid - 1), min(int(y * grid), grid - 1))
    return ["<focus>", f"<x{cell[0]}>", f"<y{cell[1]}>"]


# ---------------------------------------------------------------------------- targets on Shapes World
def _short(o: ShapeObject) -> str:
    return grammar.noun(o, with_size=False)


def _placed(o: ShapeObject) -> str:
    return f"{grammar.noun(o)} {grammar.region(o)}"


def length_caption(scene: Scene, length: str) -> str:
    """short: the objects without sizes, relations or positions; normal: the canonical caption; detailed:
    every object with size, colour, shape and where it is."""
    objs = grammar.left_to_right(scene.objects)
    if length == "short":
        return grammar._join([_short(o) for o in objs])
    if length == "normal":
        return grammar.canonical(scene)
    if len(objs) == 1:
        return _placed(objs[0])
    return f"{grammar.NUMBER_WORDS[len(objs)]} shapes: {grammar._join([_placed(o) for o in objs])}"


def form_caption(scene: Scene, form: str) -> str:
    """list: the objects comma separated, left to right; sentence: one relational sentence that chains each
    object to the next ("a ... to the left of a ... above a ...": each relation is to the object just named)."""
    objs = grammar.left_to_right(scene.objects)
    if form == "list":
        return ", ".join(grammar.noun(o) for o in objs)
    if len(objs) == 1:
        return _placed(objs[0])
    parts = [grammar.noun(objs[0])]
    for a, b in zip(objs, objs[1:], strict=False):
        parts.append(f"{grammar._rel(grammar.relation(a, b))} {grammar.noun(b)}")
    return " ".join(parts)


def focus_caption(o: ShapeObject) -> str:
    """The caption of one object alone."""
    return grammar.noun(o)


def focus_phrases(scene: Scene, o: ShapeObject) -> list[list[str]]:
    """Word lists that pick `o` out of the scene: its colour, its shape, colour + shape, or size + colour + shape,
    whichever no other object shares."""
    out = []
    for attrs in (("colour",), ("shape",), ("colour", "shape"), ("size", "colour", "shape")):
        key = [getattr(o, a) for a in attrs]
        if sum([getattr(p, a) for a in attrs] == key for p in scene.objects) == 1:
            out.append(key)
    return out


def point_on(o: ShapeObject, rng: random.Random) -> tuple[float, float]:
    """A point on the object (within 80% of its bounding circle): where a user would click."""
    while True:
        dx, dy = rng.uniform(-1, 1), rng.uniform(-1, 1)
        if dx * dx + dy * dy <= 1:
            r = 0.8 * o.radius
            return min(max(o.x + r * dx, 0.0), 1.0), min(max(o.y + r * dy, 0.0), 1.0)


def object_at(scene: Scene, x: float, y: float) -> ShapeObject:
    """The object whose centre is nearest to (x, y)."""
    return min(scene.objects, key=lambda o: (o.x - x) ** 2 + (o.y - y) ** 2)


# ---------------------------------------------------------------------------- sampling during training
@dataclass(frozen=True)
class LengthBins:
    """Length terciles of reference captions (in words), for data without scene annotations.

    Example:
        >>> bins = LengthBins.fit(["a b", "a b c", "a b c d", "a b c d e", "a b c d e f", "a b c d e f g"])
        >>> bins, bins.label("a b c d e f g")
        (LengthBins(short_max=3, normal_max=5), 'detailed')
    """

    short_max: int
    normal_max: int

    @classmethod
    def fit(cls, captions: Sequence[str]) -> LengthBins:
        lengths = sorted(len(words(c)) for c in captions) or [0]
        return cls(lengths[(len(lengths) - 1) // 3], lengths[(2 * (len(lengths) - 1)) // 3])

    def label(self, caption: str) -> str:
        n = len(words(caption))
        return "short" if n <= self.short_max else "normal" if n <= self.normal_max else "detailed"


def sample_control(caption: str, scene: Scene | None, rng: random.Random, kinds: Sequence[str],
                   p_none: float = 0.5, bins: LengthBins | None = None, grid: int = GRID,
                   weights: Sequence[float] | None = None, phrase_share: float = 0.4) -> tuple[list[str], str]:
    """(control prompt words, target caption) for one training pair: with chance `p_none` no control and the
    reference itself, else one control of `kinds` (drawn with `weights`, one per kind; default uniform) and
    the caption it asks for; `phrase_share` of the focus examples name their object by a phrase, the rest by a
    click.

    Example:
        >>> from polymodal.data.shapes import ShapeObject
        >>> scene = Scene((ShapeObject("star", "cyan", "large", 0.5, 0.5),), (40, 40, 40))
        >>> sample_control("a large cyan star", scene, random.Random(0), ["length"], p_none=0.0)
        (['<short>'], 'a cyan star')
    """
    if rng.random() < p_none:
        return [], caption
    weight_of = dict(zip(kinds, weights or [1.0] * len(kinds), strict=True))
    usable = [k for k in kinds if scene is not None or k == "length"]
    if not usable or (scene is None and bins is None):
        return [], caption
    kind = rng.choices(usable, [weight_of[k] for k in usable])[0] if weights else rng.choice(usable)
    if scene is None:  # any data: the reference labelled with its length tercile
        return [f"<{bins.label(caption)}>"], caption  # type: ignore[union-attr]
    if kind == "length":
        length = rng.choice(LENGTHS)
        return [f"<{length}>"], length_caption(scene, length)
    if kind == "form":
        form = rng.choice(FORMS)
        return [f"<{form}>"], form_caption(scene, form)
    o = rng.choice(scene.objects)
    phrases = focus_phrases(scene, o)
    if phrases and rng.random() < phrase_share:
        return ["<focus>", *rng.choice(phrases)], focus_caption(o)
    return point_prompt(*point_on(o, rng), grid), focus_caption(o)
