"""Are the captions true? Object hallucination (CHAIR) of captioners on Shapes World test and held-out splits.

    python bench/hallucination.py --run 'bundled attention LSTM=src/polymodal/assets/shapes_attention_lstm' \
        --run 'prefix LM=runs/prefix_lm'

Beam 3, the whole test and held-out-composition splits of Shapes World (n=5000, seed 0), scored by
`polymodal.eval.hallucination` against the scene files beside CIDEr-D. Writes
docs/results/hallucination.json (rows measured earlier under other labels are kept) and redraws the README.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from _report import machine

from polymodal import load
from polymodal.config import DataConfig
from polymodal.data.datasets import load_split, shapes_folder
from polymodal.eval.captions import evaluate_captioner
from polymodal.eval.hallucination import ObjectTruth
from polymodal.generate import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "hallucination.json"
KEEP = ("cider", "chair_i", "chair_s", "object_recall", "exact_objects", "binding_accuracy", "count_accuracy",
        "mentions", "images")


def score(run: str, splits: dict[str, list], truth: ObjectTruth) -> dict:
    """CIDEr-D and the hallucination metrics of one model, beam 3, per split."""
    model = load(run)
    gen = GenerationConfig(strategy="beam", beam_size=3, max_len=model.cfg.decoder.max_len)
    scores = {}
    for split, records in splits.items():
        metrics = evaluate_captioner(model, records, gen, progress=False, objects=truth)[1]
        scores[split] = {k: round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k] for k in KEEP}
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"scores": scores, "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "weights_mb": round(megabytes, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", action="append", required=True, help="label=MODEL_DIR")
    parser.add_argument("--n", type=int, default=5000, help="Shapes World size (its test/heldout splits)")
    args = parser.parse_args()
    data = DataConfig(format="shapes", n=args.n, seed=0)
    splits = {s: load_split(data, s) for s in ("test", "heldout")}
    truth = ObjectTruth.shapes(shapes_folder(data))
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    rows = {row["label"]: row for row in old["rows"]}
    for item in args.run:
        label, run = item.split("=", 1)
        rows[label] = {"label": label, "run": run, **score(run, splits, truth), "date": time.strftime("%Y-%m-%d")}
        print(label, json.dumps(rows[label]["scores"]), flush=True)
    every = [f"{row['label']}={row['run']}" for row in rows.values()]  # rows kept from earlier runs too
    out = {"command": "python bench/hallucination.py " + " ".join(f"--run {shlex.quote(r)}" for r in every),
           "source": "bench/hallucination.py; rows keep the date they were measured", "machine": machine(),
           "data": {"format": "shapes", "n": args.n, "seed": 0, "decoding": "beam 3",
                    **{f"{s}_images": len(r) for s, r in splits.items()}},
           "rows": list(rows.values())}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    sys.path.append(str(ROOT / "docs"))
    from readme_blocks import main as redraw

    redraw([])


if __name__ == "__main__":
    main()
