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


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Best wall time of each function, the runs interleaved so that a load spike hits both sides alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def load_average() -> str:
    """The 1-minute load average and core count: how busy the shared machine was."""
    import os

    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def save_plot(fig: object, name: str) -> Path:
    """Save a matplotlib figure as docs/NAME (PNG) and return the path."""
    path = DOCS / name
    fig.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def shown(path: str | Path) -> str:
    """A model path as the docs show it: relative to the repository when inside it."""
    path, root = Path(path).resolve(), DOCS.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


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
