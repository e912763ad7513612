"""The language of Shapes World: captions and question/answer pairs that are faithful to a scene.

Every spatial word is decided from object centres, with x growing to the right and y growing
downwards, both in [0, 1]. Two objects are related along the axis that separates them most
(`relation`), so "a red circle to the left of a blue square" is never said of a circle that is
mostly above the square. The public entry points are re-exported, with examples, by
`polymodal.data.shapes` (`describe`, `questions`); this module holds the grammar only.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from polymodal.errors import ConfigError

if TYPE_CHECKING:  # the grammar reads scenes; shapes.py imports this module, so no runtime import
    from polymodal.data.shapes import Scene, ShapeObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QA_TYPES = ("colour", "shape", "count", "position", "yes/no")
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`: "left", "right", "above" or "below", along the dominant axis."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


REGIONS = ("in the top left", "at the top", "in the top right", "on the left", "in the middle", "on the right",
           "in the bottom left", "at the bottom", "in the bottom right")  # every phrase `region` says


def region(o: ShapeObject) -> str:
    """The phrase for the third of the image an object's centre is in, e.g. "in the top left"."""
    col = "left" if o.x < 1 / 3 else "right" if o.x > 2 / 3 else ""
    row = "top" if o.y < 1 / 3 else "bottom" if o.y > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the middle"


def article(phrase: str) -> str:
    """"an orange star", "a red star": the indefinite article the phrase needs, then the phrase."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def noun(o: ShapeObject, with_size: bool = True) -> str:
    """"a small red circle" (or "a red circle" without the size)."""
    return article(f"{o.size} {o.colour} {o.shape}" if with_size else f"{o.colour} {o.shape}")


def left_to_right(objects: Sequence[ShapeObject]) -> list[ShapeObject]:
    """Objects in reading order: by centre x, ties broken by y (the canonical order of captions)."""
    return sorted(objects, key=lambda o: (o.x, o.y))


def _rel(rel: str, short: bool = False) -> str:
    if rel in ("left", "right"):
        return f"{rel} of" if short else f"to the {rel} of"
    return rel


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def canonical(scene: Scene) -> str:
    """The one deterministic caption of a scene, the form a model can learn to reproduce exactly.

    1 object: "a small red circle"; 2 objects: "a small red circle to the left of a large blue square"
    (left object first; upper object first and "above" when the vertical gap dominates);
    3-4 objects: "three shapes: a small red circle, a large blue square and a small green star",
    listed left to right.
    """
    objs = left_to_right(scene.objects)
    if len(objs) == 1:
        return noun(objs[0])
    if len(objs) == 2:
        a, b = objs
        rel = relation(a, b)  # "left", "above" or "below": a is the leftmost
        if rel == "below":
            a, b, rel = b, a, "above"
        return f"{noun(a)} {_rel(rel)} {noun(b)}"
    return f"{NUMBER_WORDS[len(objs)]} shapes: {_join([noun(o) for o in objs])}"


def variants(scene: Scene) -> list[str]:
    """Every non-canonical caption the grammar can say about a scene, without duplicates, in a fixed order."""
    objs = left_to_right(scene.objects)
    out: list[str] = []
    if len(objs) == 1:
        o = objs[0]
        for sized in (True, False):
            np_ = noun(o, sized)
            out += [np_, f"{np_} {region(o)}", f"there is {np_}", f"there is {np_} {region(o)}"]
    elif len(objs) == 2:
        a, b = objs
        rel = relation(a, b)
        for sa in (True, False):
            for sb in (True, False):
                na, nb = noun(a, sa), noun(b, sb)
                out += [f"{na} {_rel(rel)} {nb}", f"{na} {_rel(rel, True)} {nb}",
                        f"{nb} {_rel(_OPPOSITE[rel])} {na}", f"{nb} {_rel(_OPPOSITE[rel], True)} {na}",
                        f"{na} and {nb}", f"two shapes: {na} and {nb}", f"there is {na} {_rel(rel)} {nb}"]
    else:
        count = NUMBER_WORDS[len(objs)]
        for sized in (True, False):
            listed = _join([noun(o, sized) for o in objs])
            out += [f"{count} shapes: {listed}", listed, f"there are {count} shapes: {listed}",
                    f"{count} objects: {listed}"]
        out.append(f"there are {count} shapes")
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                out.append(f"{count} shapes including {noun(a, False)} and {noun(b, False)}")
    canon = canonical(scene)
    return [c for c in dict.fromkeys(out) if c != canon]  # dict keeps order; a set would depend on hashing


def describe(scene: Scene, rng: random.Random | None = None, k: int = 5) -> list[str]:
    """k captions: the canonical one first, then k-1 distinct variants drawn with `rng` (see shapes.describe)."""
    if k < 1:
        raise ConfigError(f"describe: k must be at least 1, got {k}")
    rng = rng if rng is not None else random.Random(repr(scene))  # repr of floats is exact and stable
    pool = variants(scene)
    rng.shuffle(pool)
    extra = [pool[i % len(pool)] for i in range(k - 1)] if pool else []  # repeats only if k > len(pool) + 1
    return [canonical(scene), *extra]


def _qa(question: str, answer: str, kind: str) -> dict[str, str]:
    return {"question": question, "answer": answer, "type": kind}


def _position(objs: Sequence[ShapeObject], rng: random.Random) -> list[dict[str, str]]:
    """A "what is left of the square?" question and an "is the circle left of the square?" one."""
    shapes = Counter(o.shape for o in objs)
    named = [o for o in objs if shapes[o.shape] == 1]  # only objects a bare shape word picks out
    out = []
    what = []
    for b in named:
        for rel in ("left", "right", "above", "below"):
            # b is the reference; the answer must be the only object on that side of it, clearly so
            side = [o for o in objs if o is not b and _on_side(o, b, rel)]
            if len(side) == 1 and relation(side[0], b) == rel:
                what.append((side[0], b, rel))
    if what:
        a, b, rel = rng.choice(what)
        out.append(_qa(f"what is {_rel(rel, True)} the {b.shape}?", a.shape, "position"))
    pairs = [(a, b) for a in named for b in named if a is not b]
    if pairs:
        a, b = rng.choice(pairs)
        rel = relation(a, b)
        truth = rng.random() < 0.5
        asked = rel if truth else _OPPOSITE[rel]
        out.append(_qa(f"is the {a.shape} {_rel(asked, True)} the {b.shape}?", "yes" if truth else "no",
                       "position"))
    return out


def _on_side(o: ShapeObject, b: ShapeObject, rel: str) -> bool:
    return {"left": o.x < b.x, "right": o.x > b.x, "above": o.y < b.y, "below": o.y > b.y}[rel]


def _exists(objs: Sequence[ShapeObject], rng: random.Random, colours: Sequence[str],
            shapes: Sequence[str]) -> dict[str, str]:
    """ "is there a green star?", answered "yes" or "no" with equal chance."""
    if rng.random() < 0.5:
        o = rng.choice(list(objs))
        return _qa(f"is there {article(o.colour)} {o.shape}?", "yes", "yes/no")
    present = {(o.colour, o.shape) for o in objs}
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    # half the negatives are near misses (a colour or shape that is in the image) so the answer needs both
    near = [(c, s) for c, s in absent if any(c == o.colour or s == o.shape for o in objs)]
    colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
    return _qa(f"is there {article(colour)} {shape}?", "no", "yes/no")


def questions(scene: Scene, rng: random.Random, colours: Sequence[str],
              shapes: Sequence[str]) -> list[dict[str, str]]:
    """Question/answer pairs about a scene; `colours` and `shapes` are the names negatives come from."""
    objs = scene.objects
    shape_count = Counter(o.shape for o in objs)
    colour_count = Counter(o.colour for o in objs)
    out = []
    by_shape = [o for o in objs if shape_count[o.shape] == 1]  # ask only when the referent is unique
    if by_shape:
        o = rng.choice(by_shape)
        out.append(_qa(f"what colour is the {o.shape}?", o.colour, "colour"))
    by_colour = [o for o in objs if colour_count[o.colour] == 1]
    if by_colour:
        o = rng.choice(by_colour)
        out.append(_qa(f"what shape is the {o.colour} object?", o.shape, "shape"))
    out.append(_qa("how many shapes are there?", NUMBER_WORDS[len(objs)], "count"))
    out += _position(objs, rng)
    out.append(_exists(objs, rng, colours, shapes))
    return out
