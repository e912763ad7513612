"""Does the video model see? Events read back out of video captions and scored, on held-out Shapes World clips,
for every input one checkpoint accepts: video with sound, the same clips silent, and their sound alone.

    OMP_NUM_THREADS=1 python bench/video_truth.py \
        --run 'motion slots + event reader=src/polymodal/assets/shapes_video_captioner' --run 'space-time=runs/video_st'

Beam 3 on the 200 test clips of `polymodal data shapes-video` (n=1200, seed 0); CIDEr-D beside the structured
scores of `polymodal.eval.video_events` (event recall / precision on (kind, colour, shape), entry/exit side,
summary kinds, event times). Writes docs/results/video_truth.json (rows kept by label) and docs/video_truth.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from _report import machine

from polymodal import load
from polymodal.data.clips import read_annotations
from polymodal.train.video import VideoDataConfig, build_bank, evaluate_video_captions, video_folder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "video_truth.json"
PAGE = ROOT / "docs" / "video_truth.md"
INPUTS = {"video + audio": ("video", "audio"), "silent video": ("video",), "audio alone": ("audio",)}
TARGETS = [("event recall", "recall", 0.90), ("entrances and exits named with the right side", "side_recall", 0.90),
           ("summary kinds right", "summary_kind_accuracy", 0.90)]


def score(run: str, data: VideoDataConfig) -> dict:
    """Every input kind the model reads (its modalities, each alone too) -> CIDEr-D and the structured scores."""
    model = load(run).eval()
    folder = video_folder(data, progress=False)
    clips = read_annotations(folder, data.test_split)
    bank = build_bank(model, clips, folder, data, progress=False)
    out = {}
    for name, inputs in INPUTS.items():
        if not set(inputs) <= set(model.cfg.media.modalities):
            continue
        m = evaluate_video_captions(model, clips, bank, data.tolerance, inputs=inputs)
        s = m["structured"]
        out[name] = {"events_cider": round(m["events"]["cider"], 3), "summary_cider": round(m["summary"]["cider"], 3),
                     "event_time_hit": round(m["event_time_hit_rate"], 3),
                     **{k: round(s[k], 3) for k in ("recall", "precision", "full_recall", "side_accuracy", "side_recall",
                                                     "summary_kind_accuracy", "exact_clip_rate", "time_mae")},
                     "seen_recall": round(s["seen"]["recall"], 3), "seen_precision": round(s["seen"]["precision"], 3),
                     "seen_side_accuracy": round(s["seen"]["side_accuracy"], 3), "clips": m["clips"]}
        if "reader" in m:  # what the EventReader names at each annotated start (no caption in between)
            out[name].update(read_core=round(m["reader"]["kind_core"], 3),
                             read_side=round(m["reader"].get("field/side", 0.0), 3))
        print(run, name, json.dumps(out[name]), flush=True)
    return {"inputs": out, "modalities": list(model.cfg.media.modalities),
            "missing_token": bool(model.cfg.media.missing_token),
            "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}


COLUMNS = [("events CIDEr-D", "events_cider", "{:.2f}"), ("event recall", "recall", "{:.1%}"),
           ("event precision", "precision", "{:.1%}"), ("side right", "side_recall", "{:.1%}"),
           ("side right of matched", "side_accuracy", "{:.1%}"),
           ("seen-event recall", "seen_recall", "{:.1%}"), ("summary kinds", "summary_kind_accuracy", "{:.1%}"),
           ("clips all right", "exact_clip_rate", "{:.1%}"), ("time hit 0.25 s", "event_time_hit", "{:.3f}"),
           ("time error s", "time_mae", "{:.2f}"), ("reader: kind, colour, shape", "read_core", "{:.1%}"),
           ("reader: side", "read_side", "{:.1%}")]


def page(results: dict) -> str:
    lines = ["# Does the video model see? Events read back out of its captions", "",
             "Written by `bench/video_truth.py` (do not edit by hand). " + results["data"], "",
             "Each generated event caption is read back into events (`polymodal.eval.video_events`) and matched "
             "one-to-one with the annotated ones: recall / precision on (kind, colour, shape); *side right*: "
             "annotated entrances and exits matched by an event that names the right side (*of matched*: among "
             "those matched at all, a rate that means little when few match); *seen-event recall*: the "
             "events that can be seen (not the off-screen sounds); *summary kinds*: the summary names exactly "
             "the clip's kinds of event; *time hit*: an annotated start with a predicted start within 0.25 s; "
             "*reader*: for models with an EventReader, what it names at the step of each annotated start, "
             "without a caption in between (side: over entrances and exits).", "",
             f"Reproduce: `{results['command']}`", "",
             "| model | input | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row in results["rows"]:
        for name, s in row["inputs"].items():
            lines.append(f"| {row['label']} | {name} | " + " | ".join(f.format(s[k]) if k in s else "-"
                                                                        for _, k, f in COLUMNS) + " |")
    lines += ["", "Targets (issue 23, held-out test clips):", ""]
    for label, key, target in TARGETS:
        best = max(((r["inputs"][i][key], r["label"], i) for r in results["rows"] for i in r["inputs"]),
                   default=(0.0, "-", "-"))
        lines.append(f"- {label} >= {target:.0%}: best {best[0]:.1%} ({best[1]}, {best[2]}, "
                     f"{'met' if best[0] >= target else 'not met'})")
    for r in results["rows"]:  # one checkpoint's inputs against each other
        full, silent = r["inputs"].get("video + audio"), r["inputs"].get("silent video")
        if full and silent:
            ok = silent["seen_recall"] >= 0.9 * full["seen_recall"]
            lines.append(f"- {r['label']}: silent video seen-event recall {silent['seen_recall']:.1%} vs "
                         f"{full['seen_recall']:.1%} with sound (within 10%: {'met' if ok else 'not met'}); "
                         f"time hit {full['event_time_hit']:.3f} (>= 0.95: "
                         f"{'met' if full['event_time_hit'] >= 0.95 else 'not met'})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", action="append", required=True, help="label=MODEL_DIR")
    args = parser.parse_args()
    data = VideoDataConfig()
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    rows = {row["label"]: row for row in old["rows"]}
    for item in args.run:
        label, run = item.split("=", 1)
        rows[label] = {"label": label, "run": run, **score(run, data), "date": time.strftime("%Y-%m-%d")}
    every = [f"{row['label']}={row['run']}" for row in rows.values()]
    results = {"command": "OMP_NUM_THREADS=1 python bench/video_truth.py "
                          + " ".join(f"--run {shlex.quote(r)}" for r in every),
               "source": "bench/video_truth.py; rows keep the date they were measured", "machine": machine(),
               "data": f"Shapes World video n={data.n} seed {data.seed}, the {data.test_split} clips, beam 3.",
               "rows": list(rows.values())}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    PAGE.write_text(page(results))
    print(f"wrote {RESULTS} and {PAGE}")


if __name__ == "__main__":
    main()
