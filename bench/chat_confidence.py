"""How sure is the assistant of its replies? Calibrated reply confidence and "not sure" (issue 22).

    OMP_NUM_THREADS=1 python bench/chat_confidence.py --fit

For a trained instruction assistant (default runs/assistant/model, configs/assistant.yaml's data: Shapes
World n=5000, seed 0): greedy replies to the evaluation requests (`eval.assistant.scene_queries`: every kind,
follow-ups, out-of-scope) on the val, test and heldout splits. A reply is right when it equals the reference
(a "describe" reply: any reference caption). Each reply's confidence is measured two ways, the product of its
tokens' probabilities ("sequence", <eos> included) and its first token's probability ("first"); for each the
temperature is fitted on val (`eval.calibration.fit_confidence_temperature`) and ECE (15 equal-width bins) is
reported before and after on test and heldout. With --fit the chosen method's temperature and the "not sure"
threshold (`eval.calibration.choose_threshold`: below it replies are right less often than half the time) are
saved in the model's config.json (`train.assistant.save_calibration`; the same as `calibrate_assistant`).
Writes the section between the chat-confidence markers of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _report import machine

from polymodal.data.records import SkipReport
from polymodal.eval.assistant import scored_queries
from polymodal.eval.calibration import reliability_markdown
from polymodal.models.assistant import InstructionAssistant
from polymodal.train.assistant import reply_figures, save_calibration, split_queries
from polymodal.train.tasks import load_task_config

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reliability.md"
START, END = "<!-- chat-confidence:start -->", "<!-- chat-confidence:end -->"
TARGET = 0.03


def measure(model_dir: Path, config: str, fit: bool, images: int) -> dict:
    """Figures per method and split; with `fit`, the sequence calibration is saved with the model."""
    _, cfg = load_task_config(config, ["task=assistant"])
    model = InstructionAssistant.from_pretrained(model_dir)
    report = SkipReport(source="instruction data")
    scored = {}
    for split in (cfg.data.val_split, *cfg.data.test_splits):
        queries, image = split_queries(cfg, split, report, images)
        scored[split] = (queries, *scored_queries(model, queries, image, progress=False))
    out: dict = {}
    for method in ("first", "sequence"):  # the saved one last: its fit stays on the model
        out[method] = {cfg.data.val_split: reply_figures(model, *scored[cfg.data.val_split], fit=True, method=method)}
        for split in cfg.data.test_splits:
            out[method][split] = reply_figures(model, *scored[split])
    if fit:
        save_calibration(model, model_dir)
    return out


def section(out: dict, command: str, seconds: float) -> str:
    """The markdown written into docs/reliability.md."""
    seq = out["sequence"]
    splits = list(seq)
    first = next(iter(seq.values()))
    lines = [f"Command: `{command}` ({seconds / 60:.1f} min on {machine()}).", "",
             f"Fitted on **{splits[0]}** ({first['replies']} replies): temperature **T = {first['temperature']:.3f}**, "
             f"\"not sure\" threshold **{first['threshold']:.3f}**.", "",
             "| method | split | replies | accuracy | ECE before (T = 1) | ECE after | \"not sure\" share | "
             "accuracy: confident / not sure |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for method in ("sequence", "first"):
        for split, f in out[method].items():
            split_txt = f"{split} (fit)" if split == splits[0] else split
            sure = (f"{f['accuracy_confident']} / {f['accuracy_not_sure']}" if method == "sequence" else "-")
            share = f"{f['not_sure_share']:.3f}" if method == "sequence" else "-"
            lines.append(f"| {method} | {split_txt} | {f['replies']} | {f['accuracy']:.3f} | {f['ece_before']:.4f} | "
                         f"{f['ece_after']:.4f} | {share} | {sure} |")
    tests = [seq[s]["ece_after"] for s in splits[1:]]
    verdict = ("met" if max(tests) <= TARGET else "**missed**")
    lines += ["", f"Target ECE <= {TARGET} on the test splits: {verdict} (after scaling: "
              + ", ".join(f"{s} {seq[s]['ece_after']:.4f}" for s in splits[1:]) + ").", "",
              f"Reliability of the saved (sequence) confidence on {splits[1]}, after scaling:", "",
              reliability_markdown(seq[splits[1]]["reliability"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "assistant" / "model")
    parser.add_argument("--config", default=str(ROOT / "configs" / "assistant.yaml"))
    parser.add_argument("--fit", action="store_true", help="save the fitted calibration with the model")
    parser.add_argument("--images", type=int, default=0, help="images per split (0 = all)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/reliability.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    out = measure(args.model, args.config, args.fit, args.images)
    command = "OMP_NUM_THREADS=1 python bench/chat_confidence.py" + (" --fit" if args.fit else "") + (
        f" --images {args.images}" if args.images else "")
    text = section(out, command, time.time() - started)
    print(text)
    if not args.no_write:
        page = PAGE.read_text(encoding="utf-8")
        if START not in page:
            raise SystemExit(f"{PAGE}: no {START} marker; add the section first")
        head, rest = page.split(START, 1)
        PAGE.write_text(f"{head}{START}\n\n{text}\n\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    main()
