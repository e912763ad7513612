"""The one record type every caption reader produces, and the report of what was skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CaptionRecord:
    """One image and its reference captions.

    Example:
        >>> CaptionRecord(id="42", image="/data/img/42.jpg", captions=["a red circle"], split="train")
        CaptionRecord(id='42', image='/data/img/42.jpg', captions=['a red circle'], split='train')
    """

    id: str                      # unique image id (a COCO image_id becomes its string form)
    image: str                   # path of the image file
    captions: list[str]
    split: str | None = None


@dataclass
class SkipReport:
    """Counts bad records by reason and keeps the first few examples, so nothing is skipped silently."""

    source: str = ""
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def skip(self, reason: str, example: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{example}: {reason}")

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: SkipReport) -> None:
        self.reasons.update(other.reasons)
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[:max(room, 0)])

    def summary(self) -> str:
        if not self.count:
            return f"{self.source}: no records skipped"
        why = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.source}: skipped {self.count} bad records ({why}); first: " + "; ".join(self.examples)
