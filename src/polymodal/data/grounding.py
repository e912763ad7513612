"""Grounded replies: a reply about where things are first points at them, then says it in words.

A position, relation or count reply starts with the centres of the objects it is about as location tokens on a
`grid` x `grid` raster, `<gx3> <gy8>` per object, then its words (Shikra / Kosmos-2 write boxes into the
answer; Molmo counts by pointing first). The words are then a simple function of tokens the model has just
written, instead of a lookup it must do in one step from the image: "is the circle left of the square?" becomes
"write the circle's centre, the square's, compare the two x tokens".

A reply may take a point back: after `<retry>` it points again, and only the points after the last `<retry>` count
(Physics of Language Models 2.2's retry data: a step written wrong, a token that retracts it, the right step).
Training shows a wrong point at another object, then `<retry>` (with loss) and the right point; no loss is taken
on the wrong point itself, so the model learns to notice a wrong point (with the look-back it reads what is under
it, nn/focus.py) and to point again, never to point wrong.

The location tokens and `<retry>` are not words: `split_words` never yields them, so no message can type them. They are hidden
from the text shown (`split_locations` returns them as points) and a user sends earlier replies back without
them; so, as reasoning models drop their earlier thinking, an earlier reply in the prompt carries no locations
and training takes no loss on such a reply (`chat_template.render`).

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tok = WordTokenizer.build(["yes no"])
    >>> tok = WordTokenizer(tok.words + location_words(4))
    >>> ids = location_ids(tok, [(0.1, 0.9)]) + tok.encode("yes")
    >>> words, points = split_locations(tok, ids)
    >>> tok.decode(words), points
    ('yes', [(0.125, 0.875)])
    >>> tok = WordTokenizer(tok.words + [RETRY])
    >>> split_locations(tok, location_ids(tok, [(0.9, 0.9)]) + [tok.index[RETRY]] + ids)[1]  # the first taken back
    [(0.125, 0.875)]
"""

from __future__ import annotations

from collections.abc import Sequence

from ..text.tokenizer import Tokenizer

Point = tuple[float, float]   # an object's centre, x and y in [0, 1] of the image
RETRY = "<retry>"             # the points written before it are taken back


def location_words(grid: int) -> list[str]:
    """The 2 * grid location tokens: <gx0> .. <gx{grid-1}>, then <gy0> ..."""
    return [f"<g{axis}{i}>" for axis in "xy" for i in range(grid)]


def location_grid(tokenizer: Tokenizer) -> int:
    """How many cells a side the tokenizer's location tokens have (0: it has none, its replies are ungrounded)."""
    index = getattr(tokenizer, "index", {})
    grid = 0
    while f"<gx{grid}>" in index and f"<gy{grid}>" in index:
        grid += 1
    return grid


def location_ids(tokenizer: Tokenizer, points: Sequence[Point]) -> list[int]:
    """`<gxI> <gyJ>` ids of each point, in order; [] for a tokenizer without location tokens."""
    grid = location_grid(tokenizer)
    if not grid:
        return []
    index = tokenizer.index  # type: ignore[attr-defined]

    def cell(v: float) -> int:
        return min(max(int(v * grid), 0), grid - 1)

    return [index[w] for x, y in points for w in (f"<gx{cell(x)}>", f"<gy{cell(y)}>")]


def retry_id(tokenizer: Tokenizer) -> int | None:
    """The id of `<retry>`, or None for a tokenizer that has none (a model never trained to take a point back)."""
    return getattr(tokenizer, "index", {}).get(RETRY)


def split_locations(tokenizer: Tokenizer, ids: Sequence[int]) -> tuple[list[int], list[Point]]:
    """A reply's word ids without its location tokens, and the points they name (cell centres; an x without its
    y is dropped; the points before a `<retry>` are taken back)."""
    grid = location_grid(tokenizer)
    if not grid:
        return list(ids), []
    words, retry = tokenizer.words, retry_id(tokenizer)  # type: ignore[attr-defined]
    kept: list[int] = []
    points: list[Point] = []
    x: float | None = None
    for i in ids:
        w = words[i] if 0 <= int(i) < len(words) else ""
        if retry is not None and int(i) == retry:
            points, x = [], None
        elif w.startswith("<gx"):
            x = (int(w[3:-1]) + 0.5) / grid
        elif w.startswith("<gy"):
            if x is not None:
                points.append((x, (int(w[3:-1]) + 0.5) / grid))
            x = None
        else:
            kept.append(int(i))
    return kept, points
