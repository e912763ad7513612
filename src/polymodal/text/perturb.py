"""Hard negative captions: the same kind of words, another meaning (NegCLIP, Yuksekgonul et al. 2023).

Contrastive models trained on random batches learn captions as bags of words: in a random batch no
other caption has the same words in another order, so nothing asks the text tower to tell "a purple
square and a white circle" from "a white square and a purple circle". A perturbed copy of each
caption, used as an extra negative, does. Words are swapped or replaced only within a group of
interchangeable words (colours, object names, counts, relations), given as data in the config, so
that the negative stays a well-formed caption that is false of the image (or nearly always so).

Example:
    >>> perturb = CaptionPerturber([["red", "blue"], ["circle", "square"]], swap_probability=1.0)
    >>> perturb("a red circle and a blue square", random.Random(0)) in {"a blue circle and a red square",
    ...                                                                  "a red square and a blue circle"}
    True
    >>> perturb("a red circle", random.Random(0)) in {"a blue circle", "a red square"}
    True
    >>> perturb("three shapes", random.Random(0)) is None  # nothing to change
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

WORD = re.compile(r"[A-Za-z]+")


def fix_articles(text: str) -> str:
    """"a orange circle" -> "an orange circle": every "a"/"an" follows the word after it.

    Example:
        >>> fix_articles("an red circle and a orange star")
        'a red circle and an orange star'
    """
    words = text.split(" ")
    for i, w in enumerate(words[:-1]):
        if w.lower() in ("a", "an"):
            words[i] = "an" if words[i + 1][:1].lower() in "aeiou" else "a"
    return " ".join(words)


class CaptionPerturber:
    """caption -> a hard negative caption, or None when no word of it is in a group.

    With two words of one group in the caption (two colours), the negative swaps them (attribute
    binding); otherwise it replaces one grouped word by another of its group (red -> blue, three ->
    four, above -> below). `swap_probability` is the chance of a swap when both are possible.
    """

    def __init__(self, word_groups: Sequence[Sequence[str]], swap_probability: float = 0.5):
        self.group_of = {w.lower(): i for i, group in enumerate(word_groups) for w in group}
        self.groups = [[w.lower() for w in group] for group in word_groups]
        self.swap_probability = swap_probability

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        swapped = self.swap(caption, rng) if rng.random() < self.swap_probability else None
        return swapped if swapped is not None else self.replace(caption, rng)

    def swap(self, caption: str, rng: random.Random) -> str | None:
        """Two different words of one group trade places (attribute binding), or None if there are none."""
        grouped = self._grouped(caption)
        pairs = [(a, b) for i, a in enumerate(grouped) for b in grouped[i + 1:]
                 if self.group_of[a[2]] == self.group_of[b[2]] and a[2] != b[2]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return _edit(caption, {a[0]: (a[1], b[2]), b[0]: (b[1], a[2])})

    def replace(self, caption: str, rng: random.Random) -> str | None:
        """One grouped word becomes another of its group (red -> blue), or None if there is none."""
        grouped = [(s, e, w) for s, e, w in self._grouped(caption) if len(self.groups[self.group_of[w]]) > 1]
        if not grouped:
            return None
        start, end, word = rng.choice(grouped)
        return _edit(caption, {start: (end, rng.choice([w for w in self.groups[self.group_of[word]] if w != word]))})

    def _grouped(self, caption: str) -> list[tuple[int, int, str]]:
        """(start, end, lower-case word) of every word of the caption that is in a group."""
        return [(m.start(), m.end(), m.group(0).lower()) for m in WORD.finditer(caption)
                if m.group(0).lower() in self.group_of]


def _edit(caption: str, edits: dict[int, tuple[int, str]]) -> str:
    """Replace the spans start -> (end, new word), then fix the articles in front of new words."""
    out, last = [], 0
    for start in sorted(edits):
        end, word = edits[start]
        out += [caption[last:start], word]
        last = end
    return fix_articles("".join(out) + caption[last:])
