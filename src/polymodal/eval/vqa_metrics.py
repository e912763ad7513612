"""VQA accuracy with several reference answers, and per-question-type reports.

The VQA accuracy of a predicted answer (Antol et al. 2015) is

    acc(ans) = min(#references equal to ans / 3, 1)

so an answer that 3 of the 10 annotators gave counts as fully correct. With fewer than 3 references
the threshold is their number (one reference: exact match, as for Shapes World). The official
evaluation script averages that formula over the 10 leave-one-out subsets of the references;
`official=True` does the same. Answers are normalised first (case, punctuation, articles, number
words -> digits), like the official script's light processing.

Example:
    >>> vqa_accuracy("Red", ["red", "red", "blue"])
    0.6666666666666666
    >>> vqa_accuracy("two", ["2"])
    1.0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..text.answers import normalize_answer


def vqa_accuracy(prediction: str, references: Sequence[str], official: bool = False) -> float:
    """Accuracy of one predicted answer against the reference answers, in [0, 1].

    Args:
        prediction: the model's answer.
        references: the annotators' answers (repeats matter: they are votes).
        official: average over leave-one-out subsets of the references, as the VQA evaluation
            script does (only meaningful with 2 or more references).

    Returns:
        min(matches / min(3, len(references)), 1), or its leave-one-out average.

    Example:
        >>> vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8, official=True)
        0.6
    """
    if not references:
        raise ValueError("vqa_accuracy: no reference answers")
    pred = normalize_answer(prediction)
    hits = [normalize_answer(r) == pred for r in references]
    if not official or len(references) < 2:
        return min(sum(hits) / min(3, len(references)), 1.0)
    total = sum(hits)
    scores = [min((total - h) / min(3, len(references) - 1), 1.0) for h in hits]
    return sum(scores) / len(scores)


def vqa_report(predictions: Sequence[str], references: Sequence[Sequence[str]],
               types: Sequence[str | None] | None = None, official: bool = False) -> dict[str, float]:
    """Mean VQA accuracy overall and per question type, and the number of questions.

    Example:
        >>> vqa_report(["red", "no"], [["red"], ["yes"]], ["colour", "yes/no"])
        {'accuracy': 0.5, 'questions': 2, 'accuracy/colour': 1.0, 'accuracy/yes/no': 0.0}
    """
    if len(predictions) != len(references):
        raise ValueError(f"vqa_report: {len(predictions)} predictions for {len(references)} questions")
    types = types if types is not None else [None] * len(predictions)
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    for pred, refs, kind in zip(predictions, references, types, strict=True):
        s = vqa_accuracy(pred, refs, official)
        scores.append(s)
        if kind:
            per_type[kind].append(s)
    out: dict[str, float] = {"accuracy": sum(scores) / max(len(scores), 1), "questions": len(scores)}
    for kind in sorted(per_type):
        out[f"accuracy/{kind}"] = sum(per_type[kind]) / len(per_type[kind])
    return out
