"""Shared by the benchmarks: timing, peak memory, and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import resource
import socket
import subprocess
import sys
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



def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, int]:
    """`polymodal serve ARGS --host 127.0.0.1 --port P` on a free port, once /healthz answers ok (2 min at most).

    Returns the process, its base URL and the port. Raises RuntimeError if it exits or does not come up.
    """
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "polymodal", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).json()["status"] == "ok":
                return proc, url, port
        except (httpx.HTTPError, ValueError):
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")

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
