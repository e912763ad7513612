"""Shared by the benchmarks: timing, peak memory, and recording a run (its history file and its docs section)."""

from __future__ import annotations

import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # appended: bench/'s names must not shadow others
    sys.path.append(str(Path(__file__).resolve().parent))
import _history  # noqa: E402

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
    """The CPU (and the GPU, where there is one), torch threads and version: the run's "machine"."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{platform.processor() or platform.machine()}{gpu}, {torch.get_num_threads()} torch threads, "
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


def write_section(name: str, markdown: str, figures: dict[str, float] | None = None,
                  described: dict[str, dict[str, str]] | None = None, series: str | None = None,
                  command: str | None = None, path: Path = DOCS / "benchmarks.md") -> Path:
    """Record this run in docs/results/bench_NAME.json, then redraw the page's sections and the README from them.

    FIGURES are the run's headline numbers (what docs/readme_blocks.py reads); DESCRIBED says what each
    is and how to print it ({"beam 3": {"what": "batched vs per-image", "format": ".1f", "unit": "x"}});
    SERIES names the code measured when it differs from the earlier runs' (see bench/_history.py);
    COMMAND is what reproduces the section (default: this script, with its --sections).

    Example:
        >>> write_section("decode", "## Decoding ...", {"beam 3": 3.1})  # doctest: +SKIP
        PosixPath('.../docs/benchmarks.md')
    """
    run = {"date": today(), "machine": machine(), "load": load_average(), "figures": figures or {},
           "markdown": markdown.strip(), "command": command_line()}
    if series:
        run["series"] = series
    page = shown(path)
    _history.append_run(name, run, command=command or bench_command(), page=page, figures=described)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure is measured side by side in one run; " \
        "regenerate with `make bench`.\n"
    path.write_text(_history.render_page(text, page))
    if path.resolve().is_relative_to(DOCS):
        redraw_readme()
    return path


def redraw_readme() -> None:
    """Redraw the README's blocks from the results files (docs/readme_blocks.py) after a run is recorded.

    A README sentence that the new figures no longer bear is reported here and fails the README check.
    """
    if str(DOCS) not in sys.path:
        sys.path.append(str(DOCS))
    import readme_blocks

    try:
        readme_blocks.main([])
    except SystemExit as stop:  # a claim in docs/readme_tables.py no longer holds: say so, keep the run
        print(stop)


def command_line() -> str:
    """This process's command line as the docs show it: `python bench/decode.py --sections kv_cache`."""
    return " ".join(["python", shown(sys.argv[0]), *sys.argv[1:]])


def bench_command() -> str:
    """The command that reproduces a section: the script, with --sections when it picked some."""
    args = sys.argv[1:]
    picked = [a for i, a in enumerate(args) if a.startswith("--sections") or (i and args[i - 1] == "--sections")]
    return " ".join(["python", shown(sys.argv[0]), *picked])
