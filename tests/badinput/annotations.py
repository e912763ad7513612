"""Annotation cases for every caption format (COCO, Karpathy, Flickr, JSONL, CSV) and VQA files.

File-level faults (missing, empty, not UTF-8, broken JSON, wrong structure, nothing usable) must
raise a `DataError` naming the file and the fix. Record-level faults (missing keys, wrong types,
unknown or duplicate ids, missing images, empty captions, paths escaping the image folder) are
documented successes: the good records are read and every bad one is counted in the `SkipReport`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from polymodal.data.formats import read_records
from polymodal.data.qa import read_qa
from polymodal.data.records import ESCAPES_ROOT, SkipReport
from polymodal.errors import DataError

from .cases import Case

Row = tuple[str, str, Any]  # (id, image file name, caption)
FORMATS = ("coco", "karpathy", "flickr", "jsonl", "csv")
SUFFIX = {"coco": ".json", "karpathy": ".json", "flickr": ".token.txt", "jsonl": ".jsonl", "csv": ".csv"}
EMOJI = "a 🐶 dog 🐕‍🦺 with a 🎾 ball 👍🏽"
RTL = "كلب يجري على العشب \u200f a dog ‏שלום"
MEGABYTE = "a red circle " * (1_048_576 // 13)


def render(fmt: str, rows: list[Row]) -> str:
    """The text of an annotation file in `fmt` holding `rows`."""
    if fmt == "coco":
        images = {i: {"id": i, "file_name": f} for i, f, _ in rows}
        anns = [{"id": n, "image_id": i, "caption": c} for n, (i, _, c) in enumerate(rows)]
        return json.dumps({"images": list(images.values()), "annotations": anns}, indent=1, ensure_ascii=False)
    if fmt == "karpathy":
        images = [{"imgid": i, "filename": f, "split": "train", "sentences": [{"raw": c}]} for i, f, c in rows]
        return json.dumps({"images": images}, indent=1, ensure_ascii=False)
    if fmt == "flickr":
        return "".join(f"{f}#{n}\t{c}\n" for n, (_, f, c) in enumerate(rows))
    if fmt == "jsonl":
        return "".join(json.dumps({"id": i, "image": f, "caption": c}, ensure_ascii=False) + "\n" for i, f, c in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "image", "caption"])
    writer.writerows(rows)
    return buf.getvalue()


def write_images(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / name)


def annotation(fmt: str, rows: list[Row], images: list[str] | None = None, bom: bool = False, crlf: bool = False,
               raw: bytes | None = None) -> Callable[[Path], tuple[Path, dict[str, Any]]]:
    """A `make` that writes the images (default: every row's) and the annotation file."""
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        folder.mkdir(parents=True, exist_ok=True)
        write_images(folder, sorted({f for _, f, _ in rows}) if images is None else images)
        path = folder / f"captions{SUFFIX[fmt]}"
        text = render(fmt, rows)
        text = text.replace("\n", "\r\n") if crlf else text
        path.write_bytes(raw if raw is not None else (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
        return path, {}
    return make


def read(fmt: str, **options: Any) -> Callable[[tuple[Path, dict[str, Any]]], tuple[list, SkipReport]]:
    def action(arg: tuple[Path, dict[str, Any]]) -> tuple[list, SkipReport]:
        report = SkipReport()
        return read_records(fmt, arg[0], report=report, **{**arg[1], **options}), report
    return action


def kept(n: int, skipped: int = 0, reason: str = "", caption: str | None = None,
         inside: bool = True) -> Callable[[Any, Any], None]:
    """Success: `n` records, `skipped` counted skips (for `reason`), optionally one exact caption."""
    def check(arg: tuple[Path, dict[str, Any]], result: tuple[list, SkipReport]) -> None:
        records, report = result
        assert len(records) == n, f"{len(records)} records, expected {n} ({report.summary()})"
        assert report.count == skipped, f"{report.count} skipped, expected {skipped}: {report.summary()}"
        if reason:
            assert report.reasons.get(reason), f"no skip for {reason!r}: {report.summary()}"
        if caption is not None:
            assert any(caption in r.captions for r in records), f"caption changed: {records[0].captions[0][:80]!r}"
        root = os.path.realpath(arg[0].parent)
        if inside:
            assert all(os.path.realpath(r.image).startswith(root + os.sep) for r in records), "image outside root"
    return check


GOOD: list[Row] = [("1", "a.png", "a red circle"), ("2", "b.png", "a blue square")]


def common_cases(fmt: str) -> list[Case]:
    """The same faults for every format."""
    c = "annotations"
    # A COCO image dropped for its own fault also orphans its annotation: two counted skips.
    orphan = 1 if fmt == "coco" else 0

    def case(name: str, make: Callable, expect: type | None = None, check: Callable | None = None,
             contains: str = "", **options: Any) -> Case:
        return Case(c, f"{fmt}-{name}", make, read(fmt, **options), expect, check=check, contains=contains)

    def escaping(name: str) -> list[Row]:
        return [*GOOD, ("3", name, "a secret")]

    def outside_image(folder: Path) -> tuple[Path, dict[str, Any]]:
        path, opts = annotation(fmt, escaping("../outside/c.png"))(folder / "data")
        write_images(folder, ["outside/c.png"])
        return path, opts

    def symlink_out(folder: Path) -> tuple[Path, dict[str, Any]]:
        write_images(folder, ["private/secret.png"])
        path, opts = annotation(fmt, escaping("link.png"), images=["a.png", "b.png"])(folder / "data")
        os.symlink(folder / "private" / "secret.png", folder / "data" / "link.png")
        return path, opts

    def in_subfolder(make: Callable) -> Callable:
        return lambda folder: make(folder / "data")

    return [
        case("missing-file", lambda f: (f / f"nope{SUFFIX[fmt]}", {}), DataError),
        case("is-a-directory", lambda f: (_mkdir(f / f"dir{SUFFIX[fmt]}"), {}), DataError),
        case("zero-bytes", annotation(fmt, GOOD, raw=b""), DataError),
        case("latin-1-not-utf8", annotation(fmt, GOOD, raw=render(fmt, [("1", "a.png", "café crème")]).encode("latin-1")),
             DataError, contains="UTF-8"),
        case("utf16-file", annotation(fmt, GOOD, raw=render(fmt, GOOD).encode("utf-16")), DataError),
        case("bom", annotation(fmt, GOOD, bom=True), check=kept(2)),
        case("crlf", annotation(fmt, GOOD, crlf=True), check=kept(2, caption="a red circle")),
        case("bom-and-crlf", annotation(fmt, GOOD, bom=True, crlf=True), check=kept(2)),
        case("all-images-missing", annotation(fmt, GOOD, images=[]), DataError, contains="images="),
        case("one-image-missing", annotation(fmt, GOOD, images=["a.png"]), check=kept(1, 1, "image file not found")),
        case("empty-caption", annotation(fmt, [*GOOD, ("3", "a.png", "")] if fmt != "flickr" else
                                         [*GOOD, ("3", "a.png", "   ")]),
             check=kept(2, 2 if fmt in ("coco", "karpathy") else 1)),
        case("emoji-caption", annotation(fmt, [("1", "a.png", EMOJI)]), check=kept(1, caption=EMOJI)),
        case("rtl-caption", annotation(fmt, [("1", "a.png", RTL)]), check=kept(1, caption=RTL.strip())),
        case("1mb-caption", annotation(fmt, [("1", "a.png", MEGABYTE.strip())]), check=kept(1, caption=MEGABYTE.strip())),
        case("path-traversal-etc-passwd", in_subfolder(annotation(fmt, escaping("../../../../../../etc/passwd"),
                                                                  images=["a.png", "b.png"])),
             check=kept(2, 1 + orphan, ESCAPES_ROOT)),
        case("absolute-path-outside", in_subfolder(annotation(fmt, escaping("/etc/hostname"), images=["a.png", "b.png"])),
             check=kept(2, 1 + orphan, ESCAPES_ROOT)),
        case("symlink-out-of-root", symlink_out, check=kept(2, 1 + orphan, ESCAPES_ROOT)),
        case("only-escaping-paths", in_subfolder(annotation(fmt, [("1", "../../etc/passwd", "x")], images=[])),
             DataError, contains="allow_outside_root"),
        case("escape-allowed-explicitly", outside_image, check=kept(3, inside=False), allow_outside_root=True),
        case("escape-refused-by-default", outside_image, check=kept(2, 1 + orphan, ESCAPES_ROOT)),
    ]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def text_file(fmt: str, text: str, images: tuple[str, ...] = ("a.png", "b.png")) -> Callable:
    def make(folder: Path) -> tuple[Path, dict[str, Any]]:
        write_images(folder, list(images))
        path = folder / f"captions{SUFFIX[fmt]}"
        path.write_text(text, encoding="utf-8")
        return path, {}
    return make


def specific_cases() -> list[Case]:
    """Faults that only some formats can have."""
    coco = render("coco", GOOD)
    good_coco = json.loads(coco)
    cases: list[tuple[str, str, str, type | None, Callable | None, str]] = [
        ("coco", "json-cut-at-10pct", coco[: len(coco) // 10], DataError, None, "line"),
        ("coco", "json-cut-at-50pct", coco[: len(coco) // 2], DataError, None, "line"),
        ("coco", "json-cut-last-brace", coco[:-1], DataError, None, "line"),
        ("coco", "trailing-comma", coco.replace("]\n}", "],\n}"), DataError, None, "line"),
        ("coco", "top-level-list", json.dumps([good_coco]), DataError, None, ""),
        ("coco", "annotations-missing", json.dumps({"images": good_coco["images"]}), DataError, None, "annotations"),
        ("coco", "images-is-a-dict", json.dumps({"images": {}, "annotations": []}), DataError, None, "images"),
        ("coco", "karpathy-file-given-as-coco", render("karpathy", GOOD), DataError, None, "karpathy"),
        ("karpathy", "json-cut-at-50pct", render("karpathy", GOOD)[:60], DataError, None, "line"),
        ("karpathy", "no-images-key", json.dumps({"pictures": []}), DataError, None, ""),
        ("jsonl", "json-array-not-lines", json.dumps([{"image": "a.png", "caption": "x"}]), DataError, None, ""),
        ("csv", "no-caption-column", "image,text\na.png,a red circle\n", DataError, None, "caption"),
        ("csv", "unterminated-quote", 'image,caption\na.png,"a red circle\n', None,
         kept(0, 0), ""),  # placeholder, replaced below
    ]
    cases = cases[:-1]
    out = [Case("annotations", f"{fmt}-{name}", text_file(fmt, text), read(fmt), expect, check=check, contains=hint)
           for fmt, name, text, expect, check, hint in cases]

    def coco_with(images: list, annotations: list, n: int, skipped: int, reason: str = "") -> Callable:
        return text_file("coco", json.dumps({"images": images, "annotations": annotations})), kept(n, skipped, reason)

    a, b = {"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}
    record_level = {
        "coco-annotation-without-caption": coco_with([a], [{"image_id": 1, "caption": "x"}, {"image_id": 1}], 1, 1),
        "coco-caption-is-a-number": coco_with([a], [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": 7}], 1, 1,
                                              "caption is not a string"),
        "coco-caption-is-null": coco_with([a], [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": None}], 1, 1),
        "coco-unknown-image-id": coco_with([a], [{"image_id": 1, "caption": "x"}, {"image_id": 9, "caption": "y"}], 1, 1,
                                           "unknown image_id"),
        "coco-image-without-file-name": coco_with([a, {"id": 2}], [{"image_id": 1, "caption": "x"}], 1, 1),
        "coco-file-name-is-a-list": coco_with([a, {"id": 2, "file_name": ["b.png"]}], [{"image_id": 1, "caption": "x"}],
                                              1, 1),
        "coco-duplicate-id-other-file": coco_with([a, {"id": 1, "file_name": "b.png"}], [{"image_id": 1, "caption": "x"}],
                                                  1, 1, "duplicate id for a different image"),
        "coco-duplicate-id-same-file": coco_with([a, a], [{"image_id": 1, "caption": "x"}], 1, 0),
        "coco-annotation-is-a-string": coco_with([a], [{"image_id": 1, "caption": "x"}, "oops"], 1, 1),
        "coco-image-without-captions": coco_with([a, b], [{"image_id": 1, "caption": "x"}], 1, 1, "image has no captions"),
    }
    karpathy = {
        "karpathy-sentences-is-a-string": ([{"filename": "a.png", "sentences": [{"raw": "x"}]},
                                            {"filename": "b.png", "sentences": "y"}], 1, 1),
        "karpathy-tokens-without-raw": ([{"filename": "a.png", "sentences": [{"tokens": ["a", "dog"]}]}], 1, 0),
        "karpathy-filename-is-a-number": ([{"filename": "a.png", "sentences": [{"raw": "x"}]},
                                           {"filename": 5, "sentences": [{"raw": "y"}]}], 1, 1),
        "karpathy-image-is-a-list": ([{"filename": "a.png", "sentences": [{"raw": "x"}]}, ["b.png"]], 1, 1),
    }
    for name, (images, n, skipped) in karpathy.items():
        record_level[name] = (text_file("karpathy", json.dumps({"images": images})), kept(n, skipped))
    lines = {
        "flickr-line-without-caption": ("flickr", "a.png#0\ta red circle\nb.png#0\n", 1, 1),
        "flickr-spaces-instead-of-tab": ("flickr", "a.png#0 a red circle\n", 1, 0),
        "flickr-captions-txt-variant": ("flickr", "image,caption\na.png,\"a red, round circle\"\n", 1, 0),
        "jsonl-broken-line": ("jsonl", '{"image": "a.png", "caption": "x"}\n{"image": "b.png", "capt\n', 1, 1),
        "jsonl-line-is-a-list": ("jsonl", '{"image": "a.png", "caption": "x"}\n["b.png", "y"]\n', 1, 1),
        "jsonl-no-caption-key": ("jsonl", '{"image": "a.png", "caption": "x"}\n{"image": "b.png"}\n', 1, 1),
        "jsonl-captions-with-a-number": ("jsonl", '{"image": "a.png", "captions": ["x", 5]}\n', 1, 1),
        "jsonl-image-is-a-number": ("jsonl", '{"image": "a.png", "caption": "x"}\n{"image": 3, "caption": "y"}\n', 1, 1),
        "jsonl-blank-lines": ("jsonl", '\n\n{"image": "a.png", "caption": "x"}\n\n', 1, 0),
        "csv-fewer-columns": ("csv", "image,caption,split\na.png,x,train\nb.png\n", 1, 1),
        "csv-quoted-newline": ("csv", 'image,caption\na.png,"a red\ncircle"\n', 1, 0),
        "csv-header-case-and-spaces": ("csv", " Image , CAPTION \na.png,x\n", 1, 0),
    }
    for name, (fmt, text, n, skipped) in lines.items():
        record_level[name] = (text_file(fmt, text), kept(n, skipped))
    for name, (make, check) in record_level.items():
        fmt = name.split("-")[0]
        out.append(Case("annotations", name, make, read(fmt), None, check=check))
    return out + qa_cases()


def qa_cases() -> list[Case]:
    def qa(text: str, images: tuple[str, ...] = ("a.png",)) -> Callable:
        def make(folder: Path) -> tuple[Path, dict[str, Any]]:
            write_images(folder / "data", list(images))
            path = folder / "data" / "questions.jsonl"
            path.write_text(text, encoding="utf-8")
            return path, {}
        return make

    def ask(arg: tuple[Path, dict[str, Any]]) -> tuple[list, SkipReport]:
        report = SkipReport()
        return read_qa(arg[0], report=report), report

    good = '{"image": "a.png", "question": "what colour?", "answer": "red"}\n'
    return [
        Case("annotations", "vqa-path-traversal", qa(good + good.replace("a.png", "../../etc/passwd")), ask,
             check=kept(1, 1)),
        Case("annotations", "vqa-only-escaping-paths", qa(good.replace("a.png", "../../etc/passwd")), ask, DataError),
        Case("annotations", "vqa-missing-question", qa(good + '{"image": "a.png", "answer": "red"}\n'), ask,
             check=kept(1, 1)),
        Case("annotations", "vqa-zero-bytes", qa(""), ask, DataError),
        Case("annotations", "vqa-broken-json-line", qa(good + '{"image": "a.png", "quest\n'), ask, check=kept(1, 1)),
    ]


def annotation_cases() -> list[Case]:
    return [c for fmt in FORMATS for c in common_cases(fmt)] + specific_cases()
