"""The README results table: captioners x decoding x split on Shapes World, scored with pycocoevalcap.

    python bench/caption_table.py --run seed=runs/seed_lstm --run attention=runs/attention_lstm \
        --run refine=runs/refine

Writes docs/results/captioning.json, then redraws docs/captioning.md and the README's captioning blocks
from it (docs/readme_blocks.py). Steps and training time come from each run's log.jsonl summary, the
parameters from the model; the notes of the file (figures measured by hand) are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from polymodal import load
from polymodal.config import DataConfig
from polymodal.data.datasets import load_split
from polymodal.eval.captions import evaluate_captioner
from polymodal.generate import GenerationConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
RESULTS = DOCS / "results"
PRETRAIN_RUN = "runs/lm_pretrain"  # the prefix LM's text-only pretraining (configs/lm_pretrain.yaml)
DEFAULT_RUNS = {"seed (ResNet-18 + LSTM)": "runs/seed_lstm", "attention LSTM": "runs/attention_lstm",
                "attention LSTM + refine": "runs/refine", "attention LSTM + SCST": "runs/attention_lstm_scst",
                "transformer decoder": "runs/transformer", "transformer decoder + SCST": "runs/transformer_scst",
                "prefix LM": "runs/prefix_lm", "prefix LM + SCST": "runs/prefix_lm_scst"}
DECODINGS = {"greedy": dict(strategy="greedy"), "beam 3": dict(strategy="beam", beam_size=3)}


def run_summary(run: Path) -> dict:
    log = run / "log.jsonl"
    if not log.exists():
        return {}
    for line in reversed(log.read_text().splitlines()):
        record = json.loads(line)
        if "summary" in record:
            return record["summary"]
    return {}


def run_row(label: str, run: str, splits: dict[str, list]) -> dict:
    """One captioner's results row: scores for each decoding and split, parameters, steps, training time."""
    model = load(run)
    summary = run_summary(Path(run))
    row = {"label": label, "run": run, "steps": summary.get("step"),
           "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "training_minutes": round(summary["seconds"] / 60, 1) if summary.get("seconds") else None, "scores": {}}
    for decoding, kwargs in DECODINGS.items():
        gen = GenerationConfig(max_len=model.cfg.decoder.max_len, **kwargs)
        row["scores"][decoding] = {s: evaluate_captioner(model, recs, gen, progress=False)[1] for s, recs in splits.items()}
        print(label, decoding, {s: round(m["cider"], 3) for s, m in row["scores"][decoding].items()}, flush=True)
    return row


def write_results(rows: list[dict], args: argparse.Namespace, splits: dict[str, list]) -> Path:
    """docs/results/captioning.json, keeping what this script does not measure (the notes) from the last one."""
    path = RESULTS / "captioning.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    pretrain = run_summary(Path(PRETRAIN_RUN)).get("step")
    data = {"command": "python bench/caption_table.py " + " ".join(f"--run {shlex.quote(r)}" for r in args.run),
            "source": f"bench/caption_table.py, {time.strftime('%Y-%m-%d', time.gmtime())}",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "data": {"format": "shapes", "n": args.n, "seed": 0, "test_images": len(splits["test"]),
                     "heldout_images": len(splits["heldout"]), "references": 5},
            "lm_pretraining_steps": pretrain or old.get("lm_pretraining_steps"), "notes": old.get("notes", {}),
            "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", action="append", help="label=RUN_DIR (default: the configs/ runs that exist)")
    parser.add_argument("--n", type=int, default=5000, help="Shapes World size (its test/heldout splits)")
    args = parser.parse_args()
    args.run = args.run or [f"{label}={run}" for label, run in DEFAULT_RUNS.items() if Path(run).exists()]
    if not args.run:
        raise SystemExit("no trained runs found; train with `polymodal train configs/attention_lstm.yaml` first")
    data = DataConfig(format="shapes", n=args.n, seed=0)
    splits = {s: load_split(data, s) for s in ("test", "heldout")}
    rows = [run_row(*item.split("=", 1), splits) for item in args.run]
    print(f"wrote {write_results(rows, args, splits)}")
    sys.path.append(str(DOCS))
    from readme_blocks import main as redraw  # README blocks and docs/captioning.md, from the results file

    redraw([])


if __name__ == "__main__":
    main()
