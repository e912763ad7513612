"""The bad-input corpus: every case, and the command that runs them all and writes the docs table.

Cases are generated at test time into a temporary folder (nothing is checked in). Run

    python -m tests.badinput.make_corpus --write docs/reliability.md

to run every case in this process and replace the table between the corpus markers of that file.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections import Counter
from pathlib import Path

from .annotations import annotation_cases
from .cases import Case, run_case
from .images import image_cases
from .models import checkpoint_cases, config_cases

START, END = "<!-- corpus:start -->", "<!-- corpus:end -->"
ORDER = ("images", "uploads", "annotations", "configs", "checkpoints", "media")


def media_available() -> bool:
    """The media cases need data/video.py and data/audio.py (PyAV decoding)."""
    return all(importlib.util.find_spec(f"polymodal.data.{m}") is not None for m in ("video", "audio"))


def all_cases() -> list[Case]:
    cases = image_cases() + annotation_cases() + config_cases() + checkpoint_cases()
    if media_available():
        from .media import media_cases

        cases += media_cases()
    ids = Counter(c.id for c in cases)
    duplicated = [i for i, n in ids.items() if n > 1]
    if duplicated:
        raise ValueError(f"duplicate case ids: {duplicated}")
    return cases


def run_all(cases: list[Case]) -> dict[str, str | None]:
    with tempfile.TemporaryDirectory(prefix="polymodal-badinput-") as tmp:
        return {c.id: run_case(c, Path(tmp) / str(i)) for i, c in enumerate(cases)}


def table(cases: list[Case], results: dict[str, str | None], seconds: float) -> str:
    by_category: dict[str, list[Case]] = {}
    for case in cases:
        by_category.setdefault(case.category, []).append(case)
    passed = sum(problem is None for problem in results.values())
    lines = [START, "", f"**{passed} of {len(cases)} bad-input cases pass** "
             f"(`python -m tests.badinput.make_corpus --write docs/reliability.md`, {seconds:.1f} s).", "",
             "| category | cases | pass | documented errors | documented successes |", "|---|---:|---:|---:|---:|"]
    for category in sorted(by_category, key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER)):
        group = by_category[category]
        ok = sum(results[c.id] is None for c in group)
        errors = sum(c.expect is not None for c in group)
        lines.append(f"| {category} | {len(group)} | {ok} | {errors} | {len(group) - errors} |")
    if not media_available():
        lines += ["", "Media (truncated mp4, zero-length wav, video without a video stream): not run, "
                  "`polymodal.data.video` / `polymodal.data.audio` are not in this tree yet."]
    lines += ["", "<details><summary>Every case</summary>", ""]
    for category in by_category:
        names = ", ".join(f"`{c.name}`" + ("" if results[c.id] is None else " **FAILS**") for c in by_category[category])
        lines.append(f"- **{category}**: {names}")
    failures = [f"- `{k}`: {v.splitlines()[0]}" for k, v in results.items() if v is not None]
    lines += ["", "</details>", ""] + (["Failing cases:", "", *failures, ""] if failures else []) + [END]
    return "\n".join(lines)


def write_table(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8") if path.exists() else f"{START}\n{END}\n"
    if START not in doc or END not in doc:
        doc = doc.rstrip("\n") + f"\n\n{START}\n{END}\n"
    head, rest = doc.split(START, 1)
    path.write_text(head + text + rest.split(END, 1)[1], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="markdown file whose corpus table to replace")
    args = parser.parse_args()
    cases = all_cases()
    start = time.perf_counter()
    results = run_all(cases)
    text = table(cases, results, time.perf_counter() - start)
    if args.write:
        write_table(args.write, text)
        print(f"wrote {args.write}")
    print(text.split("<details>")[0])
    for case_id, problem in results.items():
        if problem is not None:
            print(f"FAIL {case_id}: {problem}")


if __name__ == "__main__":
    main()
