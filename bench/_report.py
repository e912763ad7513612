"""Shared by the benchmarks: timing, peak memory, and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of `repeats` runs after one warm-up: the least disturbed measurement."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def write_section(name: str, markdown: str, path: Path = DOCS / "benchmarks.md") -> Path:
    """Replace (or append) the section between `<!-- bench:name -->` markers, keeping the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure is measured side by side in one run; " \
        "regenerate with `make bench`.\n"
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path
