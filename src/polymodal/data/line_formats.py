"""Line-oriented caption annotation readers: Flickr8k/30k token files, JSONL and CSV -> `list[CaptionRecord]`.

Registered in `DATASETS` as "flickr", "jsonl" and "csv"; the shared rules are in formats.py's docstring.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> tmp = tempfile.TemporaryDirectory()
    >>> Path(tmp.name, "images").mkdir()
    >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/images/a.jpg")
    >>> _ = Path(tmp.name, "captions.jsonl").write_text('{"image": "a.jpg", "caption": "a dog"}\\n')
    >>> records = read_jsonl(f"{tmp.name}/captions.jsonl", images=f"{tmp.name}/images")
    >>> Path(records[0].image).relative_to(Path(tmp.name).resolve()).as_posix(), records[0].captions
    ('images/a.jpg', ['a dog'])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from ..errors import DataError
from .annotation_io import (
    Collector,
    PathLike,
    allow_fields_up_to,
    caption_problem,
    clean_caption,
    read_text,
    split_lines,
)
from .records import CaptionRecord, SkipReport

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
    names = {line.strip() for line in split_lines(read_text(found)) if line.strip()}
    match = _FLICKR_SPLIT.search(found.name)
    return (match.group(1).lower() if match else found.stem), names


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
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in ("a.jpg", "b.jpg"):
        ...     Image.new("RGB", (8, 8)).save(f"{tmp.name}/{name}")
        >>> _ = Path(tmp.name, "Flickr8k.token.txt").write_text(
        ...     "a.jpg#0\\tA dog runs .\\na.jpg#1\\tA dog .\\nb.jpg#0\\tA cat .\\n")
        >>> _ = Path(tmp.name, "Flickr_8k.trainImages.txt").write_text("a.jpg\\n")
        >>> records = read_flickr(f"{tmp.name}/Flickr8k.token.txt", split="Flickr_8k.trainImages.txt")
        >>> [(r.id, r.captions, r.split) for r in records]
        [('a.jpg', ['A dog runs .', 'A dog .'], 'train')]
        >>> tmp.cleanup()
    """
    path = Path(path)
    lines = split_lines(read_text(path))
    out = Collector(path, images, report, allow_outside_root)
    name, keep = _flickr_split_list(path, split) if split is not None else (None, None)
    is_csv = bool(lines) and lines[0].strip().replace(" ", "").lower() == "image,caption"
    for n, line in enumerate(lines[1:] if is_csv else lines, start=2 if is_csv else 1):
        if not line.strip():
            continue
        if is_csv:  # quoted captions parse as CSV; unquoted ones may hold commas: cut at the first
            allow_fields_up_to(len(line))
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
        caption = clean_caption(parts[1])
        if caption is None:
            out.skip("empty caption", f"line {n}")
        elif keep is None or image in keep:
            out.add(image, image, [caption], name, f"line {n}")
    return out.finish(name)


def _add_row(out: Collector, row: dict[str, Any], where: str) -> None:
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
        caption = clean_caption(value)
        if caption is None:
            out.skip(caption_problem(value), where)
        else:
            captions.append(caption)
    key = row.get("id")
    if captions:
        out.add(image.strip() if key in (None, "") else key, image.strip(), captions, row.get("split"), where)


def read_jsonl(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read JSON Lines: one object per line with `image` and `caption` (str) or `captions` (list).

    Optional keys: `id` (default: the image path as written) and `split`. Lines for the same id are
    merged; blank lines are ignored; a line that is not valid JSON is skipped and counted.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/a.jpg")
        >>> _ = Path(tmp.name, "captions.jsonl").write_text(
        ...     '{"image": "a.jpg", "caption": "a dog"}\\n{"image": "a.jpg", "caption": "a pet"}\\n')
        >>> read_jsonl(f"{tmp.name}/captions.jsonl")[0].captions
        ['a dog', 'a pet']
        >>> tmp.cleanup()
    """
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        raise DataError(f"{path}: is a JSON array, not JSON Lines; write one JSON object per line")
    out = Collector(path, images, report, allow_outside_root)
    for n, line in enumerate(split_lines(text), start=1):
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


def read_csv(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a CSV file (TSV if it ends in .tsv) whose header names `image` and `caption` columns.

    Optional columns: `id` and `split`. Column names are matched case-insensitively; rows for the
    same id are merged; quoted fields may hold commas and newlines.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/a.jpg")
        >>> csv_text = 'image,caption\\na.jpg,a dog\\na.jpg,"a dog, sleeping"\\n'
        >>> _ = Path(tmp.name, "captions.csv").write_text(csv_text)
        >>> read_csv(f"{tmp.name}/captions.csv")[0].captions
        ['a dog', 'a dog, sleeping']
        >>> tmp.cleanup()
    """
    path = Path(path)
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    allow_fields_up_to(len(text))
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)  # keeps newlines inside quotes
    header = [h.strip().lower() for h in next(rows, [])]
    for column in ("image", "caption"):
        if column not in header:
            raise DataError(
                f"{path}: header has no {column!r} column (found: {', '.join(header) or 'nothing'}); "
                "the first row must name the columns, e.g. image,caption"
            )
    out = Collector(path, images, report, allow_outside_root)
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
