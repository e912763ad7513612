"""Where the model found each object its caption names: the attention peak of the object's noun.

An attention captioner returns, for every generated word, its attention over the image regions (a
side x side grid). For each object phrase of the best caption ("a small red circle"), the regions
the noun attended to most mark where the model looked when it named the object, so a person can check
the caption against the picture: a phrase whose marker sits on empty background is suspect.

Example:
    >>> import torch
    >>> words = "a red circle left of a blue star".split()
    >>> attention = torch.zeros(len(words), 4)   # a 2 x 2 grid of regions
    >>> attention[2, 0] = attention[7, 3] = 1.0  # "circle" looked top left, "star" bottom right
    >>> [(o["phrase"], o["x"], o["y"]) for o in locate_objects(words, attention, ShapesVocabulary())]
    [('red circle', 0.25, 0.25), ('blue star', 0.75, 0.75)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from .hallucination import CocoVocabulary, ObjectVocabulary, ShapesVocabulary


def vocabulary_for(model_words: Iterable[str]) -> ObjectVocabulary:
    """The object vocabulary that fits a model's words: Shapes World's when it knows the shapes, else COCO's.

    Example:
        >>> type(vocabulary_for(["a", "red", "circle", "square", "star"])).__name__
        'ShapesVocabulary'
    """
    shapes = ShapesVocabulary()
    known = sum(w in shapes.shapes for w in model_words)
    return shapes if known >= 3 else CocoVocabulary()


def locate_objects(words: list[str], attention: torch.Tensor, vocabulary: ObjectVocabulary) -> list[dict[str, Any]]:
    """One marker per object phrase: its words, the phrase and the attention peak of its noun.

    Args:
        words: the caption's words (as the server returns them).
        attention: (len(words) or more, N) attention over a square grid of N regions, one row per word.
        vocabulary: reads the object phrases.

    Returns:
        [{"phrase", "start", "end", "x", "y"}], x and y the peak region's centre in [0, 1] of the image
        the model saw (the centre square); phrases whose noun has no attention row are left out.
    """
    side = math.isqrt(attention.shape[-1])
    if side * side != attention.shape[-1]:
        return []  # not a square grid of regions: nothing to place
    out = []
    for span in vocabulary.spans([w.lower().strip(".,;:!?") for w in words]):
        noun = span.end - 1
        if noun >= attention.shape[0]:
            continue
        peak = int(attention[noun].argmax())
        out.append({"phrase": " ".join(words[span.start: span.end]), "start": span.start, "end": span.end,
                    "x": (peak % side + 0.5) / side, "y": (peak // side + 0.5) / side})
    return out
