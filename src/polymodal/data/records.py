"""The one record type every caption reader produces, and the report of what was skipped."""

from __future__ import annotations

import os
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


ESCAPES_ROOT = "image path escapes the dataset root"
ALLOW_OUTSIDE_HINT = ("if you trust the file, allow it with data.allow_outside_root=true "
                      "(allow_outside_root=True in Python)")


def resolve_image_path(root: str | os.PathLike, name: str, allow_outside_root: bool = False) -> str | None:
    """The absolute, normalised path of image `name` under `root`; None if it leaves `root`.

    Annotation files come from strangers: "../../etc/passwd", an absolute path or a symlink
    pointing elsewhere must not make polymodal read (and caption, or serve thumbnails of) files
    outside the dataset. Symlinks are followed for the check only; the returned path keeps them.

    Example:
        >>> resolve_image_path("/data/coco", "val/1.jpg")
        '/data/coco/val/1.jpg'
        >>> resolve_image_path("/data/coco", "../../etc/passwd") is None
        True
    """
    root = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root, name))
    if allow_outside_root:
        return path
    real_root, real_path = os.path.realpath(root), os.path.realpath(path)
    return path if os.path.commonpath([real_root, real_path]) == real_root else None
