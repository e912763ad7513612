"""Every run of a benchmark, kept in docs/results/bench_<name>.json; its docs section is drawn from that file.

A history file holds the command that reproduces the figures, what each figure is, and one entry per run:

    {"name": "kv_cache", "command": "python bench/decode.py --sections kv_cache", "page": "docs/benchmarks.md",
     "figures": {"beam 3, 16 images": {"what": "KV cache vs full recomputation", "format": ".1f", "unit": "x"}},
     "runs": [{"date": "2026-11-29", "machine": "x86_64, 1 torch threads, torch 2.14.1+cu130",
               "series": "BeamBatch", "figures": {"beam 3, 16 images": 11.8}, "markdown": "## Prefix-LM ..."}]}

A figure is a number, or [low, high] where one entry stands for several runs ("runs": 2) of which only
the range was written down. "series" names the code being measured: runs of one series compare, so
statements such as "four runs: 1.9-2.1x" are taken over the newest series (`comparable`, `figure_range`).
A page's `<!-- bench:NAME -->` section is the newest run's markdown and then the table of every run.
No torch here: docs/readme_blocks.py imports this module to check the pages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
Figure = float | list[float]


def history_path(name: str, root: Path | None = None) -> Path:
    return (root or RESULTS) / f"bench_{name}.json"


def load_history(name: str, root: Path | None = None) -> dict[str, Any]:
    """NAME's history, or an empty one when the benchmark has never been recorded."""
    path = history_path(name, root)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"name": name, "runs": []}


def histories(root: Path | None = None) -> list[dict[str, Any]]:
    """Every benchmark history under ROOT, by name."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((root or RESULTS).glob("bench_*.json"))]


def append_run(name: str, run: dict[str, Any], command: str, page: str,
               figures: dict[str, dict[str, str]] | None = None, root: Path | None = None) -> dict[str, Any]:
    """Add one run to NAME's history (created on the first run), write the file and return the history.

    Example:
        >>> append_run("decode", {"date": "2026-12-07", "machine": "x86_64", "figures": {"beam 3": 3.2}},
        ...            "python bench/decode.py", "docs/benchmarks.md")["runs"][-1]["figures"]  # doctest: +SKIP
        {'beam 3': 3.2}
    """
    history = load_history(name, root)
    history.update(name=name, command=command, page=page)
    history["figures"] = {**history.get("figures", {}), **(figures or {})}
    history["runs"] = [*history.get("runs", []), run]
    history_path(name, root).parent.mkdir(parents=True, exist_ok=True)
    history_path(name, root).write_text(json.dumps(history, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return history


def bounds(value: Figure) -> tuple[float, float]:
    """(low, high) of a figure: a number is its own range."""
    return (float(value[0]), float(value[1])) if isinstance(value, list) else (float(value), float(value))


def comparable(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the newest run's series: the ones a range or a count may be taken over."""
    runs = history.get("runs", [])
    return [r for r in runs if r.get("series") == runs[-1].get("series")] if runs else []


def earlier_series(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the series before the newest one (empty when there is none)."""
    older = history.get("runs", [])[: len(history.get("runs", [])) - len(comparable(history))]
    return [r for r in older if r.get("series") == older[-1].get("series")] if older else []


def run_count(runs: list[dict[str, Any]]) -> int:
    """How many runs the entries stand for (an entry with "runs": n stands for n)."""
    return sum(int(r.get("runs", 1)) for r in runs)


def figure_range(runs: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Lowest and highest value of figure KEY over RUNS (runs without it are left out).

    Example:
        >>> figure_range([{"figures": {"x": 2.1}}, {"runs": 2, "figures": {"x": [1.9, 2.1]}}], "x")
        (1.9, 2.1)
    """
    values = [bounds(r["figures"][key]) for r in runs if key in r.get("figures", {})]
    if not values:
        raise KeyError(f"no run has figure {key!r}")
    return min(lo for lo, _ in values), max(hi for _, hi in values)


def span(low: float, high: float, spec: str = ".1f", unit: str = "x") -> str:
    """'1.9-2.1x', or one value where both ends print alike.

    Example:
        >>> span(1.9, 2.1), span(2.05, 2.05, ".2f")
        ('1.9-2.1x', '2.05x')
    """
    a, b = format(low, spec), format(high, spec)
    return f"{a}{unit}" if a == b else f"{a}-{b}{unit}"


def show(history: dict[str, Any], key: str, value: Figure) -> str:
    """A figure as its history says to print it (format and unit under "figures")."""
    how = history.get("figures", {}).get(key, {})
    return span(*bounds(value), how.get("format", "g"), how.get("unit", ""))


def runs_table(history: dict[str, Any]) -> str:
    """One row per run: date, machine, series and every figure the history describes."""
    keys = list(history.get("figures", {}))
    notes = any("note" in r for r in history["runs"])
    series = any("series" in r for r in history["runs"])
    head = ["date", "machine", *(["series"] if series else []), *keys, *(["note"] if notes else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in history["runs"]:
        count = f" ({run['runs']} runs)" if run.get("runs", 1) != 1 else ""
        cells = [run["date"] + count, run.get("machine", "-"), *([run.get("series", "-")] if series else [])]
        cells += [show(history, k, run["figures"][k]) if k in run["figures"] else "-" for k in keys]
        lines.append("| " + " | ".join(cells + ([run.get("note", "")] if notes else [])) + " |")
    return "\n".join(lines)


def render_section(history: dict[str, Any]) -> str:
    """The newest run's markdown, then the table of every run and where it is kept."""
    markdown = next((r["markdown"] for r in reversed(history["runs"]) if "markdown" in r), "")
    name = history["name"]
    return (f"{markdown.strip()}\n\nEvery run so far ([results/bench_{name}.json](results/bench_{name}.json), "
            f"written by `{history['command']}`):\n\n{runs_table(history)}")


def render_page(text: str, page: str, root: Path | None = None) -> str:
    """TEXT (the page PAGE, e.g. "docs/benchmarks.md") with every section that has a history redrawn."""
    for history in histories(root):
        if history.get("page") == page and history.get("runs"):
            text = put_section(text, history["name"], render_section(history))
    return text


def put_section(text: str, name: str, markdown: str) -> str:
    """Replace (or append) the section between the `<!-- bench:NAME -->` markers, keeping the others."""
    block = f"<!-- bench:{name} -->\n{markdown.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    return pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"


def pages(root: Path | None = None) -> list[str]:
    """The pages (paths relative to the repository) that some history draws a section of."""
    return sorted({h["page"] for h in histories(root) if h.get("page")})
