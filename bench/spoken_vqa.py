"""Spoken VQA side by side: typed vs cascaded (recognizer -> text VQA) vs end-to-end, on the same spoken questions.

    OMP_NUM_THREADS=1 python bench/spoken_vqa.py             # after `polymodal train configs/spoken_vqa.yaml`

The test questions are those of configs/spoken_vqa.yaml's data (Shapes World n=5000 test split, spoken by the
held-out TEST_VOICES, clean and noisy as sampled: a third clean, the rest at 30 to 5 dB SNR, a quarter with
reverb). Each is answered three ways:

    typed       the bundled text VQA model (src/polymodal/assets/shapes_vqa) on the question text
    cascaded    the bundled recognizer (shapes_asr, beam 8 + lexicon) -> the same text VQA model on its transcript
    end_to_end  the spoken VQA model (runs/spoken_vqa/model) on the audio, no transcript

Reported: VQA accuracy overall, per question type, clean / noisy, per SNR; the recognizer's WER on these
questions; milliseconds per question of each path (batched, 1 torch thread). The issue's target: spoken VQA
within 3 points of typed. Writes docs/results/spoken_vqa.json and the section of docs/speech.md between
`<!-- spoken_vqa:begin -->` and `<!-- spoken_vqa:end -->`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import machine

import polymodal
from polymodal.assets import ASSETS, BUNDLED_ASR, BUNDLED_VQA
from polymodal.eval.asr_metrics import word_error_rate
from polymodal.eval.vqa_metrics import vqa_accuracy
from polymodal.train.spoken_vqa import spoken_records
from polymodal.train.tasks import load_task_config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "spoken_vqa.json"
PAGE = ROOT / "docs" / "speech.md"
BEGIN, END = "<!-- spoken_vqa:begin -->", "<!-- spoken_vqa:end -->"
TARGET_POINTS = 3.0
PATHS = ("typed", "cascaded", "end_to_end")


def batched(fn: Callable[[list, list], list], a: list, b: list, size: int) -> list:
    return [x for i in range(0, len(a), size) for x in fn(a[i:i + size], b[i:i + size])]


def groups(records: list) -> dict[str, list[int]]:
    """Row indices of every group reported: all, each question type, clean / noisy, each SNR."""
    out: dict[str, list[int]] = {"all": list(range(len(records)))}
    for i, r in enumerate(records):
        out.setdefault(f"type/{r.type}", []).append(i)
        out.setdefault("clean" if r.clean else "noisy", []).append(i)
        out.setdefault(f"snr/{'clean' if r.snr_db is None else int(r.snr_db)}", []).append(i)
    return out


def run(model_dir: Path, config: Path, limit: int | None = None) -> dict:
    _, cfg = load_task_config(config, [])
    records = spoken_records(cfg.data, progress=False)["test"][:limit]
    images, audio = [r.image for r in records], [r.audio for r in records]
    vqa, asr = polymodal.load(ASSETS / BUNDLED_VQA), polymodal.load(ASSETS / BUNDLED_ASR)
    e2e = polymodal.load(model_dir)
    answers, seconds = {}, {}
    started = time.perf_counter()
    answers["typed"] = batched(vqa.answer, images, [r.question for r in records], 256)
    seconds["typed"] = time.perf_counter() - started
    started = time.perf_counter()
    heard = asr.transcribe(audio, batch_size=32)
    spoken = [h or "<silence>" for h in heard]  # nothing heard: the question cannot be answered
    answers["cascaded"] = batched(vqa.answer, images, spoken, 256)
    seconds["cascaded"] = time.perf_counter() - started
    started = time.perf_counter()
    answers["end_to_end"] = batched(e2e.answer, images, audio, 64)
    seconds["end_to_end"] = time.perf_counter() - started
    correct = {p: [vqa_accuracy(a, r.answers) for a, r in zip(answers[p], records, strict=True)] for p in PATHS}
    table = {g: {"questions": len(rows), **{p: round(100 * sum(correct[p][i] for i in rows) / len(rows), 2)
                                             for p in PATHS}} for g, rows in groups(records).items()}
    overall = table["all"]
    gaps = {p: round(overall["typed"] - overall[p], 2) for p in ("cascaded", "end_to_end")}
    return {
        "command": "OMP_NUM_THREADS=1 python bench/spoken_vqa.py" + (f" --limit {limit}" if limit else ""),
        "machine": machine(),
        "models": {"typed": f"src/polymodal/assets/{BUNDLED_VQA}", "cascaded": f"src/polymodal/assets/{BUNDLED_ASR} "
                   f"(beam {asr.cfg.beam_size} + lexicon) -> src/polymodal/assets/{BUNDLED_VQA}",
                   "end_to_end": str(model_dir)},
        "data": {"questions": len(records), "split": "test (Shapes World n=5000 seed 0), held-out voices",
                 "spoken_questions": {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}},
        "accuracy": table,
        "points_below_typed": gaps,
        "target_points": TARGET_POINTS,
        "target_met": {p: gaps[p] <= TARGET_POINTS for p in gaps},
        "asr_wer_percent": round(100 * word_error_rate(heard, [r.question.rstrip("?") for r in records]), 2),
        "ms_per_question": {p: round(1000 * seconds[p] / len(records), 2) for p in PATHS},
    }


def label(key: str) -> str:
    """A table row's name: "type/yes/no" -> "type: yes/no", "snr/10" -> "noise at 10 dB SNR"."""
    group, _, value = key.partition("/")
    if group == "type":
        return f"type: {value}"
    if group == "snr":
        return f"noise at {value} dB SNR"
    return {"all": "**all**", "clean": "clean (no noise)", "noisy": "noisy (30-5 dB SNR)"}[key]


def section(result: dict) -> str:
    acc, gaps = result["accuracy"], result["points_below_typed"]
    snrs = sorted((k for k in acc if k.startswith("snr/") and k != "snr/clean"), key=lambda k: -int(k[4:]))
    keys = ["all", "clean", "noisy", *sorted(k for k in acc if k.startswith("type/")), *snrs]
    rows = [f"| {label(k)} | {acc[k]['questions']} | " + " | ".join(f"{acc[k][p]:.1f}" for p in PATHS) + " |"
            for k in keys]
    verdict = "; ".join(f"{p.replace('_', '-')} {acc['all'][p]:.1f}%, {abs(gaps[p]):.1f} points "
                        f"{'below' if gaps[p] >= 0 else 'above'} typed: target "
                        f"{'met' if result['target_met'][p] else 'missed'}" for p in gaps)
    n = result["data"]["questions"]
    diffs = {p: round(abs(gaps[p]) * n / 100) for p in gaps}
    ms = result["ms_per_question"]
    return "\n".join([
        BEGIN,
        "## Spoken VQA: typed vs cascaded vs end-to-end",
        "",
        f"`{result['command']}` (figures in [results/spoken_vqa.json](results/spoken_vqa.json); {result['machine']}).",
        f"The same {result['data']['questions']} test questions (Shapes World test split, held-out voices, clean and "
        "noisy as sampled) answered three ways: **typed** (the bundled text VQA model on the question text), "
        "**cascaded** (the bundled recognizer, then the same VQA model on its transcript: "
        "`polymodal vqa src/polymodal/assets/shapes_vqa IMAGE --audio Q.wav`) and **end-to-end** (runs/spoken_vqa: "
        "the recognizer's frozen front end -> an adapter -> the VQA model's fusion and classifier, fine-tuned; "
        "`polymodal train configs/spoken_vqa.yaml`, then `polymodal vqa runs/spoken_vqa IMAGE --audio Q.wav`).",
        "",
        "| questions | n | typed % | cascaded % | end-to-end % |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"Target (issue 20): spoken VQA within {result['target_points']:.0f} points of typed. {verdict} "
        f"(net {diffs['cascaded']} and {diffs['end_to_end']} of {n} questions; one point is {n // 100} questions). "
        f"The recognizer's WER on these questions: {result['asr_wer_percent']:.1f}%. Time per question, batched, "
        f"1 thread: typed {ms['typed']:.1f} ms, cascaded {ms['cascaded']:.1f} ms, "
        f"end-to-end {ms['end_to_end']:.1f} ms.",
        END,
    ])


def write_page(text: str) -> None:
    page = PAGE.read_text(encoding="utf-8")
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        page = head + text + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + text + "\n"
    PAGE.write_text(page, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/spoken_vqa/model"), help="end-to-end model")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "spoken_vqa.yaml",
                        help="its training config (the spoken questions' data section)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test questions (a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args.model, args.config, args.limit)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_page(section(result))
    print(json.dumps({"accuracy": result["accuracy"]["all"], "points_below_typed": result["points_below_typed"],
                      "target_met": result["target_met"], "asr_wer_percent": result["asr_wer_percent"]}))


if __name__ == "__main__":
    main()
