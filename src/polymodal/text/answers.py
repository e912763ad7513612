"""Answers as the VQA evaluation reads them: normalised text, and soft scores from several annotators.

Example:
    >>> normalize_answer("The two Circles!")
    '2 circles'
    >>> answer_scores(["yes", "yes", "no"])
    {'yes': 0.6666666666666666, 'no': 0.3333333333333333}
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s']")


def plain_words(text: str) -> list[str]:
    """Lower-case words with punctuation dropped (apostrophes kept): what every text comparison starts from.

    Example:
        >>> plain_words("It's a RED, red circle!")
        ["it's", 'a', 'red', 'red', 'circle']
    """
    return _PUNCT.sub(" ", text.lower()).split()


def normalize_answer(answer: str) -> str:
    """Lower-case, drop punctuation and articles, write numbers as digits, squeeze spaces.

    Example:
        >>> normalize_answer("  The Two red Circles! ")
        '2 red circles'
    """
    return " ".join(_NUMBERS.get(w, w) for w in plain_words(answer) if w not in _ARTICLES)


def answer_scores(references: Sequence[str]) -> dict[str, float]:
    """The VQA accuracy every distinct reference answer would get: soft training targets.

    Example:
        >>> answer_scores(["yes", "yes", "no"])
        {'yes': 0.6666666666666666, 'no': 0.3333333333333333}
    """
    counts: dict[str, int] = defaultdict(int)
    for r in references:
        counts[normalize_answer(r)] += 1
    k = min(3, len(references))
    return {a: min(n / k, 1.0) for a, n in counts.items()}
