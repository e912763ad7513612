"""POPE-style object hallucination probe (Li et al. 2023, "Evaluating Object Hallucination in Large
Vision-Language Models"): "is there a <object> in the image?" for objects that are there and, as many,
objects that are not, drawn three ways:

    random       any absent object
    popular      the absent objects most frequent in the training images
    adversarial  absent objects that share a colour or a shape with one present, most often seen
                 together with the present ones in training first (the near misses a model guesses)

An object is a colour + shape ("a red circle"), the identity CHAIR counts in eval/hallucination.py.
Scores: accuracy, precision, recall and F1 of "yes", and the yes-rate (50% for a model without bias;
one that says yes to everything gets recall 1 and accuracy 0.5).

Example:
    >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),), (40, 40, 40))
    >>> stats = ObjectStats.from_scenes([scene])
    >>> qs = pope_questions([("1", "a.png", scene)], "adversarial", stats, per_image=1)
    >>> [(q.question, q.truth) for q in qs]  # a near miss: the same shape in another colour
    [('is there a red circle in the image?', True), ('is there a blue circle in the image?', False)]
    >>> pope_metrics([True, False], ["yes", "no"])["accuracy"]
    1.0
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..data.shapes import COLOURS, SHAPES, Scene, ShapeObject
from ..data.shapes_text import article
from ..text.answers import normalize_answer

Pair = tuple[str, str]  # (colour, shape)
ALL = [(c, s) for c in COLOURS for s in SHAPES]


@dataclass
class ObjectStats:
    """How often each object appears in the training scenes, and how often two appear together."""

    frequency: Counter = field(default_factory=Counter)
    together: Counter = field(default_factory=Counter)

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> ObjectStats:
        stats = cls()
        for scene in scenes:
            pairs = {(o.colour, o.shape) for o in scene.objects}
            stats.frequency.update(pairs)
            stats.together.update((a, b) for a in pairs for b in pairs if a != b)
        return stats


@dataclass
class PopeQuestion:
    image: str
    question: str
    truth: bool                        # is the object in the image?
    object: Pair


Sampler = Callable[[list[Pair], set[Pair], ObjectStats, random.Random, int], list[Pair]]


def _random(absent: list[Pair], present: set[Pair], stats: ObjectStats, rng: random.Random, k: int) -> list[Pair]:
    return rng.sample(absent, min(k, len(absent)))


def _popular(absent: list[Pair], present: set[Pair], stats: ObjectStats, rng: random.Random, k: int) -> list[Pair]:
    return sorted(absent, key=lambda p: (-stats.frequency[p], p))[:k]


def similar(pair: Pair, present: set[Pair]) -> bool:
    """Shares its colour or its shape with an object that is there."""
    return any(pair[0] == c or pair[1] == s for c, s in present)


def _adversarial(absent: list[Pair], present: set[Pair], stats: ObjectStats, rng: random.Random,
                 k: int) -> list[Pair]:
    def rank(p: Pair) -> tuple:
        return (not similar(p, present), -sum(stats.together[(p, q)] for q in present), p)

    return sorted(absent, key=rank)[:k]


SAMPLINGS: dict[str, Sampler] = {"random": _random, "popular": _popular, "adversarial": _adversarial}


def pope_questions(scenes: Sequence[tuple[str, str, Scene]], sampling: str, stats: ObjectStats,
                   per_image: int = 3, seed: int = 0) -> list[PopeQuestion]:
    """Per image (id, path, scene): up to `per_image` present objects and as many absent ones."""
    sample = SAMPLINGS[sampling]
    out = []
    for image_id, image, scene in scenes:
        rng = random.Random(f"pope/{sampling}/{seed}/{image_id}")
        present = sorted({(o.colour, o.shape) for o in scene.objects})
        yes = rng.sample(present, min(per_image, len(present)))
        no = sample([p for p in ALL if p not in present], set(present), stats, rng, len(yes))
        for pair, truth in [*((p, True) for p in yes), *((p, False) for p in no)]:
            out.append(PopeQuestion(image, f"is there {article(pair[0])} {pair[1]} in the image?", truth, pair))
    return out


def said_yes(reply: str) -> bool:
    return normalize_answer(reply).startswith("yes")


def pope_metrics(truth: Sequence[bool], replies: Sequence[str]) -> dict[str, float]:
    """accuracy, precision, recall, f1 (of "yes") and yes_rate, with the question count."""
    yes = [said_yes(r) for r in replies]
    tp = sum(y and t for y, t in zip(yes, truth, strict=True))
    fp = sum(y and not t for y, t in zip(yes, truth, strict=True))
    fn = sum(t and not y for y, t in zip(yes, truth, strict=True))
    n = max(len(truth), 1)
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"accuracy": sum(y == t for y, t in zip(yes, truth, strict=True)) / n, "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "yes_rate": sum(yes) / n, "questions": len(truth)}


__all__ = ["ObjectStats", "PopeQuestion", "SAMPLINGS", "ShapeObject", "pope_metrics", "pope_questions", "said_yes",
           "similar"]
