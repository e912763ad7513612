"""What the caption annotation readers share: file checks, caption cleaning and the record collector.

The readers live in formats.py (COCO, Karpathy: JSON documents) and line_formats.py (Flickr, JSONL,
CSV: a record per line); the rules they all follow are in formats.py's docstring.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .records import ALLOW_OUTSIDE_HINT, ESCAPES_ROOT, CaptionRecord, SkipReport, resolve_image_path

log = logging.getLogger(__name__)

PathLike = str | Path


# ----------------------------------------------------------------------------- shared helpers
def check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the annotation file inside it")
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check the path")


def read_text(path: Path) -> str:
    check_file(path)
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: drop a leading byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); re-save the file as UTF-8") from e


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or re-export the file") from e


def split_lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on U+2028 etc., which are legal inside JSON strings.
    return [line.rstrip("\r") for line in text.split("\n")]


def clean_caption(value: Any) -> str | None:
    """The stripped caption, or None if it is not a non-empty string (`caption_problem` says why)."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def caption_problem(value: Any) -> str:
    return "caption is not a string" if not isinstance(value, str) else "empty caption"


def allow_fields_up_to(size: int) -> None:
    """Let the csv module read fields as long as the file (its default stops at 128 KiB, which a
    long caption can pass); the limit is process-wide, so it only ever grows."""
    if size > csv.field_size_limit():
        csv.field_size_limit(size)


def _keep(record_split: str | None, wanted: str | None) -> bool:
    if wanted is None or record_split is None:
        return True
    return record_split == wanted or (wanted == "train" and record_split == "restval")


@dataclass
class _Entry:
    image: str
    captions: list[str] = field(default_factory=list)
    split: str | None = None


class Collector:
    """Groups captions per image id, resolves paths, and turns the survivors into records."""

    def __init__(self, path: Path, images: PathLike | None, report: SkipReport | None,
                 allow_outside_root: bool = False):
        self.path, self.allow_outside_root = path, allow_outside_root
        self.root = os.path.abspath(images if images is not None else path.parent)
        self.own_report = report is None
        self.report = report if report is not None else SkipReport()
        self.report.source = self.report.source or str(path)
        self.entries: dict[str, _Entry] = {}

    def skip(self, reason: str, where: str) -> None:
        self.report.skip(reason, f"{self.path.name} {where}")

    def add(self, key: Any, file_name: str, captions: list[str], split: Any, where: str) -> None:
        """Register an image, merging with an earlier entry of the same id unless its file differs."""
        key, split = str(key), (None if split in (None, "") else str(split))
        image = resolve_image_path(self.root, file_name, self.allow_outside_root)
        if image is None:
            self.skip(ESCAPES_ROOT, f"{where} ({file_name!r})")
            return
        entry = self.entries.setdefault(key, _Entry(image, [], split))
        if entry.image != image:
            self.skip("duplicate id for a different image", f"{where} (id {key!r})")
        else:
            entry.captions.extend(captions)

    def finish(self, split: str | None) -> list[CaptionRecord]:
        records = []
        for key, entry in self.entries.items():
            if not _keep(entry.split, split):
                continue
            if not entry.captions:
                self.skip("image has no captions", f"image {key!r}")
            elif not os.path.isfile(entry.image):
                self.skip("image file not found", entry.image)
            else:
                records.append(CaptionRecord(key, entry.image, entry.captions, entry.split or split))
        if not records:
            which = f" for split {split!r}" if split is not None else ""
            missing = self.report.reasons.get("image file not found")
            hint = f"; image paths are resolved under {self.root}: pass images=<the image folder>" if missing else ""
            hint += f"; {ALLOW_OUTSIDE_HINT}" if self.report.reasons.get(ESCAPES_ROOT) else ""
            fix = "check that this is the annotation file, in this format" + (" and split" if split else "")
            raise DataError(f"{self.path}: no usable records{which}{hint}; {fix} ({self.report.summary()})")
        if self.own_report and self.report.count:
            log.warning(self.report.summary())
        return records


# ----------------------------------------------------------------------------- readers
