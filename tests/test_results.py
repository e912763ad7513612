"""Figures a reader can trust: every README figure is drawn from docs/results/, every results file names the
command that writes it, and a benchmark run is kept in its history and redrawn into its docs section."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
sys.path += [str(ROOT / "bench"), str(ROOT / "docs")]  # appended: bench/load.py must not shadow anything
import _history  # noqa: E402
import readme_blocks  # noqa: E402
import readme_tables  # noqa: E402
import task_results  # noqa: E402

MEASURED = re.compile(r"\d+(\.\d+)?\s?(x|%|ms|s|min|minutes|MB)(?![A-Za-z0-9])")  # a figure with its unit
# (not `\b`: after "%" a word boundary needs a letter next, so "98%," and "98% of" would slip through)


def test_every_results_file_names_the_command_that_writes_it():
    files = sorted(RESULTS.glob("*.json"))
    assert len(files) >= 10
    for path in files:
        command = json.loads(path.read_text(encoding="utf-8")).get("command")
        assert isinstance(command, str) and command.strip(), f"{path.name}: no \"command\""


def test_every_benchmark_run_has_a_date_a_machine_and_described_figures():
    for history in _history.histories():
        assert history["runs"] and any("markdown" in r for r in history["runs"]), history["name"]
        for run in history["runs"]:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", run["date"]) and run["machine"] and run["figures"]
            assert set(run["figures"]) <= set(history["figures"]), f"{history['name']}: a figure nobody describes"


def test_readme_tables_and_figures_all_lie_in_generated_blocks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    outside = re.sub(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", "", readme, flags=re.S)
    outside = re.sub(r"```.*?```", "", outside, flags=re.S)  # commands, not figures
    assert [line for line in outside.splitlines() if line.startswith("|")] == []
    assert [line for line in outside.splitlines() if MEASURED.search(line)] == []


def test_readme_figures_agree_with_the_results_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_blocks.render(readme) == readme
    vqa, chat = readme_tables.results("vqa"), readme_tables.results("chat")
    assert f"**{readme_tables.pct(vqa['test']['accuracy'])}** test" in readme
    assert f"{chat['test']['turns']} test turns" in readme


@pytest.fixture
def results_copy(tmp_path, monkeypatch):
    """A copy of docs/results that the README builders read instead of the real one."""
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    monkeypatch.setattr(readme_tables, "RESULTS", copy)
    monkeypatch.setattr(_history, "RESULTS", copy)
    return copy


def test_a_changed_figure_makes_the_readme_stale(results_copy):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    vqa = json.loads((results_copy / "vqa.json").read_text())
    vqa["test"]["accuracy"] = 0.5
    (results_copy / "vqa.json").write_text(json.dumps(vqa))
    redrawn = readme_blocks.render(readme)
    assert redrawn != readme and "**50.0%** test" in redrawn


def test_a_claim_the_figures_no_longer_bear_stops_the_build(results_copy):
    data = json.loads((results_copy / "captioning.json").read_text())
    seed = next(r for r in data["rows"] if r["label"].startswith("seed"))
    seed["scores"]["beam 3"]["test"]["cider"] = 0.1  # beam search now hurts the seed model
    (results_copy / "captioning.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="beam search helps every model"):
        readme_tables.caption_findings()


def test_ranges_and_counts_are_taken_over_the_newest_series():
    history = {"name": "kv", "figures": {"s": {"format": ".1f", "unit": "x"}}, "runs": [
        {"date": "2026-11-28", "series": "old", "figures": {"s": 9.0}},
        {"date": "2026-11-29", "series": "new", "figures": {"s": 2.1}},
        {"date": "2026-11-29", "series": "new", "runs": 2, "figures": {"s": [1.9, 2.1]}}]}
    runs = _history.comparable(history)
    assert _history.run_count(runs) == 3 and _history.figure_range(runs, "s") == (1.9, 2.1)
    assert _history.figure_range(_history.earlier_series(history), "s") == (9.0, 9.0)
    assert _history.show(history, "s", [1.9, 2.1]) == "1.9-2.1x"


def test_a_benchmark_run_is_kept_and_its_section_redrawn(tmp_path):
    described = {"beam 3": {"what": "batched vs loop", "format": ".1f", "unit": "x"}}
    for date, value in (("2026-11-29", 3.0), ("2026-12-07", 3.2)):
        _history.append_run("demo", {"date": date, "machine": "cpu", "figures": {"beam 3": value},
                                     "markdown": f"## Demo\n\nMeasured {value}x on {date}."},
                            "python bench/demo.py", "docs/page.md", described, root=tmp_path)
    page = "# Page\n\n<!-- bench:demo -->\nold text\n<!-- /bench:demo -->\n"
    drawn = _history.render_page(page, "docs/page.md", root=tmp_path)
    assert "Measured 3.2x on 2026-12-07." in drawn and "old text" not in drawn and "Measured 3.0x" not in drawn
    assert "| 2026-11-29 | cpu | 3.0x |" in drawn and "| 2026-12-07 | cpu | 3.2x |" in drawn
    assert len(json.loads((tmp_path / "bench_demo.json").read_text())["runs"]) == 2


def test_write_section_records_the_run_with_its_date_and_machine(tmp_path, monkeypatch):
    import _report

    monkeypatch.setattr(_history, "RESULTS", tmp_path / "results")
    page = tmp_path / "bench.md"
    _report.write_section("demo", "## Demo\n\nbody", {"speed-up": 2.0},
                          described={"speed-up": {"format": ".2f", "unit": "x"}}, path=page)
    run = _history.load_history("demo")["runs"][-1]
    assert run["date"] == _report.today() and "torch" in run["machine"] and run["figures"] == {"speed-up": 2.0}
    assert "<!-- bench:demo -->\n## Demo\n\nbody" in page.read_text() and "2.00x" in page.read_text()


def test_a_task_run_refreshes_its_results_file_and_keeps_the_command(tmp_path):
    shutil.copy(RESULTS / "vqa.json", tmp_path / "vqa.json")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"step": 3000, "loss": 0.1, "test": {"accuracy": 0.99, "questions": 2461},
                                   "heldout": {"accuracy": 0.98, "questions": 2482}}))
    task_results.refresh("vqa", [str(metrics)], root=tmp_path)
    data = json.loads((tmp_path / "vqa.json").read_text())
    assert data["command"] == readme_tables.results("vqa")["command"]
    assert data["test"]["accuracy"] == 0.99 and "loss" not in data and str(metrics) in data["source"]
