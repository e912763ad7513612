"""Does a caption obey its trained control? Checks read the caption's words against the Shapes World scene.

    length   the caption's word count is nearest to the target of the length asked for (of the three)
    form     list: no relation or position word, the objects separated by commas; sentence: no comma, a relation
    focus    the caption names the pointed-at object (its colour and shape) and no other

Example:
    >>> from polymodal.data.shapes import Scene, ShapeObject
    >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
    ...                ShapeObject("square", "blue", "large", 0.7, 0.3)), (40, 40, 40))
    >>> length_obeys("a red circle and a blue square", scene, "short"), form_of("a red circle, a blue square", 2)
    (True, 'list')
    >>> named_objects("a small red circle to the left of a large blue square")
    [('red', 'circle'), ('blue', 'square')]
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.caption_controls import LENGTHS, form_caption, length_caption, words
from ..data.shapes import COLOURS, SHAPES, Scene, ShapeObject
from ..text.tokenizer import split_words

RELATION_WORDS = frozenset({"left", "right", "above", "below", "top", "bottom", "middle", "of"})


def length_class(caption: str, scene: Scene) -> str | None:
    """The length (short / normal / detailed) whose target word count is nearest; None on a tie."""
    n = len(words(caption))
    gaps = {length: abs(n - len(words(length_caption(scene, length)))) for length in LENGTHS}
    best = min(gaps.values())
    nearest = [length for length, gap in gaps.items() if gap == best]
    return nearest[0] if len(nearest) == 1 else None


def length_obeys(caption: str, scene: Scene, length: str) -> bool:
    return length_class(caption, scene) == length


def form_of(caption: str, objects: int) -> str | None:
    """"list", "sentence" or None (neither) for a caption of a scene with `objects` objects."""
    said, commas = set(words(caption)), split_words(caption).count(",")
    if not said & RELATION_WORDS and commas == objects - 1:
        return "list"
    if commas == 0 and said & RELATION_WORDS:
        return "sentence"
    return None


def named_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) of each object the caption names: a shape word with the colour word before it."""
    out, colour = [], None
    for w in words(caption):
        if w in COLOURS:
            colour = w
        elif w in SHAPES:
            out.append((colour or "", w))
            colour = None
    return out


def focus_obeys(caption: str, target: ShapeObject) -> bool:
    """The caption names `target` and no other object."""
    return set(named_objects(caption)) == {(target.colour, target.shape)}


def filtered_references(references: Sequence[str], scene: Scene, control: str, value: str) -> list[str]:
    """The references that say what a control asks for, and the caption built for it from the scene.

    Example:
        >>> from polymodal.data.shapes import ShapeObject
        >>> scene = Scene((ShapeObject("star", "cyan", "large", 0.5, 0.5),), (40, 40, 40))
        >>> filtered_references(["a large cyan star", "a cyan star", "there is a cyan star"], scene, "length", "short")
        ['a cyan star']
    """
    if control == "length":
        built = length_caption(scene, value)
        kept = [r for r in references if length_obeys(r, scene, value)]
    else:
        built = form_caption(scene, value)
        kept = [r for r in references if form_of(r, len(scene.objects)) == value]
    return list(dict.fromkeys([built, *kept]))
