"""Caption annotation readers: COCO, Karpathy, Flickr, JSONL and CSV files -> `list[CaptionRecord]`.

Every reader has the signature `read_xxx(path, images=None, split=None, report=None)` and is
registered in `DATASETS` under its format name; `read_records(format, ...)` looks one up.

Rules shared by all readers:

- `images` is the folder that image file names are relative to (default: the annotation file's
  folder); records carry absolute, normalised paths.
- File-level problems (missing file, invalid JSON or UTF-8, wrong top-level structure, missing CSV
  column) raise one-line `DataError`s naming the file, the line/column and the fix.
- Record-level problems (missing key, non-string or empty caption, unknown image_id, image file not
  on disk, malformed line) are skipped and counted in `report` (`SkipReport`). When the caller
  passes no report, a summary of the skips is logged as a warning, so nothing is dropped silently.
- Captions are stripped; files may start with a UTF-8 BOM and use CRLF line endings.
- Image paths that leave the image folder ("../../etc/passwd", absolute paths elsewhere, symlinks
  out) are skipped and counted unless the caller passes `allow_outside_root=True`.
- Entries that share an image id are merged (their captions are concatenated); an entry that reuses
  an id for a *different* image file is skipped and counted ("duplicate id for a different image").
- `split=None` keeps everything. Otherwise a record is kept when its split equals `split`, when
  `split == "train"` and its split is Karpathy's "restval" (the usual "train + restval" practice),
  or when it has no split at all (files such as captions_train2014.json hold one split each; such
  records get `split` as theirs). Flickr takes `split` as an image-list file instead (see there).
- If no record survives, `DataError` says so, with the skip summary.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..registry import DATASETS
from .records import ALLOW_OUTSIDE_HINT, ESCAPES_ROOT, CaptionRecord, SkipReport, resolve_image_path

log = logging.getLogger(__name__)

PathLike = str | Path


# ----------------------------------------------------------------------------- shared helpers
def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the annotation file inside it")
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check the path")


def _read_text(path: Path) -> str:
    _check_file(path)
    try:
        return path.read_bytes().decode("utf-8-sig")  # -sig: drop a leading byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); re-save the file as UTF-8") from e


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix or re-export the file") from e


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits on U+2028 etc., which are legal inside JSON strings.
    return [line.rstrip("\r") for line in text.split("\n")]


def _clean_caption(value: Any) -> str | None:
    """The stripped caption, or None if it is not a non-empty string (`_caption_problem` says why)."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def _caption_problem(value: Any) -> str:
    return "caption is not a string" if not isinstance(value, str) else "empty caption"


def _allow_fields_up_to(size: int) -> None:
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


class _Collector:
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
def _karpathy_hint(data: dict[str, Any]) -> str:
    first = data["images"][:1] if isinstance(data.get("images"), list) else []
    if first and isinstance(first[0], dict) and "sentences" in first[0]:
        return " (this looks like a Karpathy split file: use format 'karpathy')"
    return ""


@DATASETS.register("coco")
def read_coco(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a COCO captions file (`captions_train2014.json` style).

    The file holds `images` ([{"id", "file_name", optional "split"}]) and `annotations`
    ([{"image_id", "caption"}]). Captions are grouped per image. Official COCO files carry no
    "split" per image (one file per split), so with a `split` they are kept whole.

    Example:
        >>> records = read_coco("annotations/captions_val2014.json", images="val2014")  # doctest: +SKIP
        >>> records[0].captions[:1]  # doctest: +SKIP
        ['A man riding a wave on top of a surfboard.']
    """
    path = Path(path)
    data = _read_json(path)
    need = "a COCO captions file is an object with 'images' and 'annotations' lists; check the file and its format"
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a JSON {type(data).__name__}, not an object; {need}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            got = "is missing" if key not in data else f"is a {type(data[key]).__name__}, not a list"
            raise DataError(f"{path}: '{key}' {got}; {need}{_karpathy_hint(data)}")
    out = _Collector(path, images, report, allow_outside_root)
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name") if not isinstance(img, dict) or k not in img]
        if missing:
            out.skip(f"image entry has no '{missing[0]}' key", f"image entry {i}")
        elif not isinstance(img["file_name"], str) or not img["file_name"]:
            out.skip("file_name is not a non-empty string", f"image entry {i}")
        else:
            out.add(img["id"], img["file_name"], [], img.get("split"), f"image entry {i}")
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation {i}"
        missing = [k for k in ("image_id", "caption") if not isinstance(ann, dict) or k not in ann]
        if missing:
            out.skip(f"annotation has no '{missing[0]}' key", where)
            continue
        entry = out.entries.get(str(ann["image_id"]))
        caption = _clean_caption(ann["caption"])
        if entry is None:
            out.skip("unknown image_id", f"{where} (image_id {ann['image_id']!r})")
        elif caption is None:
            out.skip(_caption_problem(ann["caption"]), where)
        else:
            entry.captions.append(caption)
    return out.finish(split)


@DATASETS.register("karpathy")
def read_karpathy(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a Karpathy split file (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`).

    Each image is {"filepath"?, "filename", "split", "sentences": [{"raw", "tokens"}], "cocoid"? |
    "imgid"?}; the path is `images / filepath / filename`. A sentence without "raw" falls back to its
    joined "tokens". `split="train"` also keeps Karpathy's "restval" images.

    Example:
        >>> records = read_karpathy("dataset_coco.json", images="coco", split="test")  # doctest: +SKIP
        >>> len(records)  # doctest: +SKIP
        5000
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{path}: no top-level 'images' list; a Karpathy file looks like "
            '{"images": [{"filename": ..., "split": ..., "sentences": [{"raw": ...}]}]}; check the file and its format'
        )
    out = _Collector(path, images, report, allow_outside_root)
    for i, img in enumerate(data["images"]):
        where = f"image {i}"
        missing = [k for k in ("filename", "sentences") if not isinstance(img, dict) or k not in img]
        if missing:
            out.skip(f"image has no '{missing[0]}' key", where)
            continue
        if not isinstance(img["filename"], str) or not isinstance(img["sentences"], list):
            out.skip("filename is not a string or sentences is not a list", where)
            continue
        captions = []
        for j, sentence in enumerate(img["sentences"]):
            text = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if text is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                text = " ".join(str(t) for t in sentence["tokens"])
            caption = _clean_caption(text)
            if caption is None:
                out.skip("sentence has no 'raw' text" if text is None else _caption_problem(text), f"{where} sentence {j}")
            else:
                captions.append(caption)
        key = next((img[k] for k in ("cocoid", "imgid", "id") if k in img), img["filename"])
        file_name = os.path.join(img.get("filepath") or "", img["filename"])
        out.add(key, file_name, captions, img.get("split"), where)
    return out.finish(split)


_FLICKR_SPLIT = re.compile(r"(train|dev|val|test)", re.IGNORECASE)
_FLICKR_SPACED = re.compile(r"^(\S+#\d+) +(.*)$")


def _flickr_split_list(path: Path, split: str) -> tuple[str, set[str]]:
    """Resolve a Flickr split to (name, image names): a list file, or a name like 'train'."""
    candidates = [Path(split), path.parent / split]
    if not Path(split).suffix:  # a bare name: look for Flickr_8k.<name>Images.txt next to the captions
        candidates += sorted(path.parent.glob(f"*{split}Images.txt"))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise DataError(
            f"{path}: split {split!r} is not an image-list file; for Flickr pass the path of a list such as "
            "Flickr_8k.trainImages.txt (one image name per line), or split=None for all images"
        )
    names = {line.strip() for line in _lines(_read_text(found)) if line.strip()}
    match = _FLICKR_SPLIT.search(found.name)
    return (match.group(1).lower() if match else found.stem), names


@DATASETS.register("flickr")
def read_flickr(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read Flickr8k/30k captions: `Flickr8k.token.txt`, `results_20130124.token` or `captions.txt`.

    Token files hold lines `1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ...`; the
    `captions.txt` variant starts with the header `image,caption` and splits each line at its
    first comma. `split` is an image-list file (e.g. `Flickr_8k.trainImages.txt`, absolute or
    next to the captions), or a bare name such as "train" that finds `*trainImages.txt` there;
    records get the split name found in the list's file name ("train", "dev", "test").

    Example:
        >>> records = read_flickr("Flickr8k.token.txt", images="Flicker8k_Dataset",
        ...                       split="Flickr_8k.trainImages.txt")  # doctest: +SKIP
        >>> len(records), len(records[0].captions)  # doctest: +SKIP
        (6000, 5)
    """
    path = Path(path)
    lines = _lines(_read_text(path))
    out = _Collector(path, images, report, allow_outside_root)
    name, keep = _flickr_split_list(path, split) if split is not None else (None, None)
    is_csv = bool(lines) and lines[0].strip().replace(" ", "").lower() == "image,caption"
    for n, line in enumerate(lines[1:] if is_csv else lines, start=2 if is_csv else 1):
        if not line.strip():
            continue
        if is_csv:  # quoted captions parse as CSV; unquoted ones may hold commas: cut at the first
            _allow_fields_up_to(len(line))
            row = next(csv.reader([line]))
            parts = row if len(row) == 2 else line.split(",", 1)
        elif "\t" in line:
            parts = line.split("\t", 1)
        else:  # some copies lost their tabs: accept "name.jpg#0 caption", nothing looser
            match = _FLICKR_SPACED.match(line)
            parts = list(match.groups()) if match else [line]
        if len(parts) != 2:
            out.skip("line has no caption after the image name", f"line {n}")
            continue
        image, _, number = parts[0].strip().rpartition("#")
        image = image if image and number.isdigit() else parts[0].strip()
        caption = _clean_caption(parts[1])
        if caption is None:
            out.skip("empty caption", f"line {n}")
        elif keep is None or image in keep:
            out.add(image, image, [caption], name, f"line {n}")
    return out.finish(name)


def _add_row(out: _Collector, row: dict[str, Any], where: str) -> None:
    """Shared by JSONL and CSV: one row with image, caption(s), optional id and split."""
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        out.skip("no 'image' key" if image is None else "image is not a non-empty string", where)
        return
    if "captions" in row and isinstance(row["captions"], list):
        raw = row["captions"]
    elif "caption" in row or "captions" in row:
        raw = [row.get("caption", row.get("captions"))]
    else:
        out.skip("no 'caption' key", where)
        return
    captions = []
    for value in raw:
        caption = _clean_caption(value)
        if caption is None:
            out.skip(_caption_problem(value), where)
        else:
            captions.append(caption)
    key = row.get("id")
    if captions:
        out.add(image.strip() if key in (None, "") else key, image.strip(), captions, row.get("split"), where)


@DATASETS.register("jsonl")
def read_jsonl(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read JSON Lines: one object per line with `image` and `caption` (str) or `captions` (list).

    Optional keys: `id` (default: the image path as written) and `split`. Lines for the same id are
    merged; blank lines are ignored; a line that is not valid JSON is skipped and counted.

    Example:
        >>> # captions.jsonl: {"image": "a.jpg", "caption": "a dog"}\\n{"image": "a.jpg", "caption": "a pet"}
        >>> read_jsonl("captions.jsonl")[0].captions  # doctest: +SKIP
        ['a dog', 'a pet']
    """
    path = Path(path)
    text = _read_text(path)
    if text.lstrip().startswith("["):
        raise DataError(f"{path}: is a JSON array, not JSON Lines; write one JSON object per line")
    out = _Collector(path, images, report, allow_outside_root)
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.skip("invalid JSON", f"line {n} column {e.colno}")
            continue
        if not isinstance(row, dict):
            out.skip("line is not a JSON object", f"line {n}")
        else:
            _add_row(out, row, f"line {n}")
    return out.finish(split)


@DATASETS.register("csv")
def read_csv(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a CSV file (TSV if it ends in .tsv) whose header names `image` and `caption` columns.

    Optional columns: `id` and `split`. Column names are matched case-insensitively; rows for the
    same id are merged; quoted fields may hold commas and newlines.

    Example:
        >>> # captions.csv: image,caption\\na.jpg,a dog\\na.jpg,"a dog, sleeping"
        >>> read_csv("captions.csv")[0].captions  # doctest: +SKIP
        ['a dog', 'a dog, sleeping']
    """
    path = Path(path)
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    _allow_fields_up_to(len(text))
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)  # keeps newlines inside quotes
    header = [h.strip().lower() for h in next(rows, [])]
    for column in ("image", "caption"):
        if column not in header:
            raise DataError(
                f"{path}: header has no {column!r} column (found: {', '.join(header) or 'nothing'}); "
                "the first row must name the columns, e.g. image,caption"
            )
    out = _Collector(path, images, report, allow_outside_root)
    try:
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            where = f"line {rows.line_num}"
            if len(row) < len(header):
                out.skip("row has fewer columns than the header", where)
            else:
                _add_row(out, dict(zip(header, row, strict=False)), where)
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV at line {rows.line_num} ({e}); check the quoting") from e
    return out.finish(split)


# ----------------------------------------------------------------------------- entry point
def read_records(
    format: str, path: PathLike, images: PathLike | None = None, split: str | None = None,
    report: SkipReport | None = None, allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read an annotation file with the reader registered under `format`.

    Args:
        format: one of `DATASETS.names()`: "coco", "csv", "flickr", "jsonl", "karpathy".
        path: the annotation file.
        images: folder the image file names are relative to (default: the annotation's folder).
        split: which split to keep (None: all); see the module docstring for each format.
        report: collects skipped records; pass one to show or check it afterwards.
        allow_outside_root: accept image paths that leave the image folder ("../x.jpg", absolute
            paths, symlinks out); by default such records are skipped and counted.

    Returns:
        One `CaptionRecord` per usable image, in file order.

    Raises:
        DataError: the file is missing or unreadable, or no record survives.
        ConfigError: `format` is not a registered format.

    Example:
        >>> report = SkipReport()
        >>> records = read_records("coco", "captions_val2014.json", images="val2014", report=report)  # doctest: +SKIP
        >>> print(report.summary())  # doctest: +SKIP
        captions_val2014.json: no records skipped
    """
    reader: Callable[..., list[CaptionRecord]] = DATASETS.get(format)
    _check_file(Path(path))
    return reader(path, images=images, split=split, report=report, allow_outside_root=allow_outside_root)
