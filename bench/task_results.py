"""Refresh a task's results file (docs/results/TASK.json) from what its run wrote, then redraw the README.

    python bench/task_results.py vqa runs/vqa/metrics.json
    python bench/task_results.py chat runs/chat/metrics.json
    python bench/task_results.py retrieval runs/contrastive/retrieval_eval.json \
        runs/contrastive/zeroshot_colour.json runs/contrastive/zeroshot_shape.json

metrics.json is what `polymodal train configs/vqa.yaml` (or chat.yaml) writes into its run folder; the
retrieval files are the JSON that `polymodal retrieval-eval` and `polymodal zeroshot --json` print. Only
the figures a file measures are replaced: the command, a baseline row and the other files' figures stay.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
RESULTS = DOCS / "results"
# What each task's run files measure: the keys copied from them
MEASURED = {"vqa": ("step", "test", "heldout"), "chat": ("step", "test", "heldout"),
            "retrieval": ("strict", "text_match", "true_of_image", "strict_ceiling", "hard_negative_captions")}


def merge(task: str, data: dict[str, Any], new: dict[str, Any], source: str) -> dict[str, Any]:
    """DATA (a results file) with the figures of NEW (one run file) put in; a zero-shot result has a "task" key.

    Example:
        >>> new = {"test": {"accuracy": 0.95}, "heldout": {"accuracy": 0.9}, "loss": 1.0}
        >>> merged = merge("vqa", {"command": "c", "test": {"accuracy": 0.8}}, new, "runs/vqa/metrics.json")
        >>> merged["command"], merged["test"], "loss" in merged
        ('c', {'accuracy': 0.95}, False)
    """
    out = dict(data)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    if task == "retrieval" and "task" in new:
        out["zero_shot"] = {**out.get("zero_shot", {}), new["task"]: new, "source": source, "date": today}
        return out
    missing = [k for k in MEASURED[task] if k not in new and k != "step"]
    if missing:
        raise SystemExit(f"{source}: no {', '.join(missing)}; is this the file `{task}` writes?")
    out.update({k: new[k] for k in MEASURED[task] if k in new}, source=source, date=today)
    return out


def refresh(task: str, files: list[str], root: Path = RESULTS) -> Path:
    """Merge every run file into docs/results/TASK.json and write it."""
    path = root / f"{task}.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"command": ""}
    for file in files:
        data = merge(task, data, json.loads(Path(file).read_text(encoding="utf-8")), f"{file}, written by the run")
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(MEASURED))
    parser.add_argument("files", nargs="+", help="the run's metrics.json, or retrieval-eval / zeroshot --json output")
    args = parser.parse_args()
    print(f"wrote {refresh(args.task, args.files)}")
    sys.path.append(str(DOCS))
    from readme_blocks import main as redraw  # the README blocks drawn from the results files

    sys.exit(redraw([]))


if __name__ == "__main__":
    main()
