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

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..registry import DATASETS
from .annotation_io import (
    Collector,
    PathLike,
    caption_problem,
    check_file,
    clean_caption,
    read_json,
)
from .records import CaptionRecord, SkipReport


def _karpathy_hint(data: dict[str, Any]) -> str:
    first = data["images"][:1] if isinstance(data.get("images"), list) else []
    if first and isinstance(first[0], dict) and "sentences" in first[0]:
        return " (this looks like a Karpathy split file: use format 'karpathy')"
    return ""


def read_coco(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a COCO captions file (`captions_train2014.json` style).

    The file holds `images` ([{"id", "file_name", optional "split"}]) and `annotations`
    ([{"image_id", "caption"}]). Captions are grouped per image. Official COCO files carry no
    "split" per image (one file per split), so with a `split` they are kept whole.

    Example:
        >>> import json, tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/1.jpg")
        >>> coco = {"images": [{"id": 1, "file_name": "1.jpg"}],
        ...         "annotations": [{"image_id": 1, "caption": "A black square. "},
        ...                         {"image_id": 1, "caption": "dark"}]}
        >>> _ = Path(tmp.name, "captions.json").write_text(json.dumps(coco))
        >>> records = read_coco(f"{tmp.name}/captions.json")
        >>> records[0].id, records[0].captions
        ('1', ['A black square.', 'dark'])
        >>> tmp.cleanup()
    """
    path = Path(path)
    data = read_json(path)
    need = "a COCO captions file is an object with 'images' and 'annotations' lists; check the file and its format"
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a JSON {type(data).__name__}, not an object; {need}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            got = "is missing" if key not in data else f"is a {type(data[key]).__name__}, not a list"
            raise DataError(f"{path}: '{key}' {got}; {need}{_karpathy_hint(data)}")
    out = Collector(path, images, report, allow_outside_root)
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
        caption = clean_caption(ann["caption"])
        if entry is None:
            out.skip("unknown image_id", f"{where} (image_id {ann['image_id']!r})")
        elif caption is None:
            out.skip(caption_problem(ann["caption"]), where)
        else:
            entry.captions.append(caption)
    return out.finish(split)


def read_karpathy(
    path: PathLike, images: PathLike | None = None, split: str | None = None, report: SkipReport | None = None,
    allow_outside_root: bool = False,
) -> list[CaptionRecord]:
    """Read a Karpathy split file (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`).

    Each image is {"filepath"?, "filename", "split", "sentences": [{"raw", "tokens"}], "cocoid"? |
    "imgid"?}; the path is `images / filepath / filename`. A sentence without "raw" falls back to its
    joined "tokens". `split="train"` also keeps Karpathy's "restval" images.

    Example:
        >>> import json, tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for name in ("1.jpg", "2.jpg"):
        ...     Image.new("RGB", (8, 8)).save(f"{tmp.name}/{name}")
        >>> test = {"filename": "1.jpg", "cocoid": 1, "split": "test",
        ...         "sentences": [{"raw": "a black square"}]}
        >>> restval = {"filename": "2.jpg", "cocoid": 2, "split": "restval",
        ...            "sentences": [{"tokens": ["a", "dark"]}]}  # no "raw": its tokens, joined
        >>> _ = Path(tmp.name, "dataset_coco.json").write_text(json.dumps({"images": [test, restval]}))
        >>> records = read_karpathy(f"{tmp.name}/dataset_coco.json", split="train")  # train + restval
        >>> [(r.id, r.captions) for r in records]
        [('2', ['a dark'])]
        >>> tmp.cleanup()
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{path}: no top-level 'images' list; a Karpathy file looks like "
            '{"images": [{"filename": ..., "split": ..., "sentences": [{"raw": ...}]}]}; check the file and its format'
        )
    out = Collector(path, images, report, allow_outside_root)
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
            caption = clean_caption(text)
            if caption is None:
                out.skip("sentence has no 'raw' text" if text is None else caption_problem(text), f"{where} sentence {j}")
            else:
                captions.append(caption)
        key = next((img[k] for k in ("cocoid", "imgid", "id") if k in img), img["filename"])
        file_name = os.path.join(img.get("filepath") or "", img["filename"])
        out.add(key, file_name, captions, img.get("split"), where)
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
        >>> import json, tempfile
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (8, 8)).save(f"{tmp.name}/1.jpg")
        >>> coco = {"images": [{"id": 1, "file_name": "1.jpg"}],
        ...         "annotations": [{"image_id": 1, "caption": "a black square"},
        ...                         {"image_id": 7, "caption": "x"}]}
        >>> _ = Path(tmp.name, "captions.json").write_text(json.dumps(coco))
        >>> report = SkipReport()
        >>> len(read_records("coco", f"{tmp.name}/captions.json", report=report))
        1
        >>> report.examples
        ['captions.json annotation 1 (image_id 7): unknown image_id']
        >>> tmp.cleanup()
    """
    reader: Callable[..., list[CaptionRecord]] = DATASETS.get(format)
    check_file(Path(path))
    return reader(path, images=images, split=split, report=report, allow_outside_root=allow_outside_root)
