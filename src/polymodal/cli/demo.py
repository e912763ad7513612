"""The main job behind `make demo`: the bundled captioner on Shapes World, end to end, in under a minute.

Writes Shapes World (once, into the cache), captions sample test images with beam search and n-best,
evaluates the test and held-out-composition splits, draws attention heatmaps and a training curve,
and writes a markdown report. Every picture the report shows sits beside it (images/, heatmaps/) and is
linked by a relative path, so the output folder can be moved, zipped or shared as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..api import load
from ..assets import BUNDLED_VQA, bundled_model_dir
from ..checkpoint import write_json
from ..config import DataConfig
from ..data.datasets import load_split, shapes_folder
from ..errors import InputError
from ..eval.captions import evaluate_captioner, metrics_table
from ..eval.hallucination import ObjectTruth
from ..eval.viz import caption_heatmaps, plot_training_curves
from ..generate import GenerationConfig
from .app import out_folder

SAMPLES = 6
QUESTION = "how many shapes are there?"
EVAL_IMAGES = 200  # per split: enough for stable metrics, small enough for a one-minute demo


def run_demo(out: str | Path = "demo_out", model_dir: str | Path | None = None, n: int = 5000) -> Path:
    """Run the demo; returns the path of the markdown report."""
    started = time.time()
    out = out_folder(Path(out))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir) if model_dir else bundled_model_dir()
    model = load(model_dir)
    data = DataConfig(format="shapes", n=n, seed=0)
    print(f"model: {model_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)")

    test = load_split(data, "test")
    lines = ["# polymodal demo: the bundled captioner on Shapes World", "",
             f"Model: `{model_dir.name}`. Decoding: beam search, beam 3.", "", "## Sample captions (test split)", ""]
    print("\nsample test images, beam 3 n-best beside the references:")
    vqa = load(bundled_model_dir(BUNDLED_VQA))  # the page's other capability: questions about the image
    for rec in test[:SAMPLES]:
        nbest = model.caption_nbest([rec.image], strategy="beam", beam_size=3, num_return_sequences=3)[0]
        print(f"  {Path(rec.image).name}\n    model: {nbest[0]}   (n-best: {' | '.join(nbest[1:])})\n"
              f"    refs:  {rec.captions[0]} | {rec.captions[1]}")
        answer, p = vqa.answer_topk(rec.image, QUESTION, 1)[0][0]
        print(f"    asked {QUESTION!r}: {answer} (p={p:.2f})")
        lines += [f"![{rec.id}]({_beside(rec.image, out, 'images')})", "",
                  f"- **model**: {nbest[0]}", f"- n-best: {' / '.join(nbest[1:])}",
                  f"- references: {' / '.join(rec.captions[:3])}",
                  f"- asked the bundled VQA model \"{QUESTION}\": **{answer}** (p={p:.2f})", ""]

    generation = GenerationConfig(strategy="beam", beam_size=3, max_len=model.cfg.decoder.max_len)
    truth = ObjectTruth.shapes(shapes_folder(data))  # are the named objects in the picture?
    all_metrics = {}
    for split in ("test", "heldout"):
        records = (test if split == "test" else load_split(data, split))[:EVAL_IMAGES]
        results, metrics = evaluate_captioner(model, records, generation, progress=False, objects=truth)
        all_metrics[split] = metrics
        write_json(out / f"results_{split}.json", [{"image_id": k, "caption": v} for k, v in results.items()])
        print(f"\n{split} split ({len(results)} images):\n{metrics_table(metrics)}")
    write_json(out / "metrics.json", all_metrics)
    lines += [f"## Metrics (beam 3, first {EVAL_IMAGES} images of each split)", "",
              "CHAIR-i: named objects that are not in the image; exact objects: captions that name exactly the "
              "scene's objects.", "",
              "| split | BLEU-4 | METEOR | ROUGE-L | CIDEr-D | CHAIR-i | exact objects |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {m['bleu4']:.3f} | {m['meteor']:.3f} | {m['rouge_l']:.3f} | {m['cider']:.3f} | "
              f"{m['chair_i']:.1%} | {m['exact_objects']:.1%} |" for s, m in all_metrics.items()]

    lines += ["", "## Where the model looks", "", "One panel per generated word (attention over the image).", ""]
    for rec in test[:3]:
        folder = out / "heatmaps" / Path(rec.image).stem
        try:
            captions, _ = caption_heatmaps(model, rec.image, folder, strategy="beam", beam_size=3)
        except InputError as err:  # a model without attention (the seed LSTM): say so instead of drawing
            lines += [f"Not drawn: {err}", ""]
            break
        grid = (folder / "grid.png").relative_to(out).as_posix()
        lines += [f"**{captions[0]}**", "", f"![heatmaps]({grid})", ""]
    log = model_dir / "log.jsonl"
    if log.exists():
        plot_training_curves(log, out / "training_curves.png")
        lines += ["## Training curves", "", "![curves](training_curves.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"\nreport: {report.resolve()}\nheatmaps: {(out / 'heatmaps').resolve()}\n"
          f"metrics: {(out / 'metrics.json').resolve()}  ({time.time() - started:.0f} s)\n"
          f"the web page with every bundled model: polymodal serve   (then open http://127.0.0.1:8000/)")
    return report


def _beside(image: str | Path, out: Path, folder: str) -> str:
    """Copy `image` into out/folder/ and return its link relative to the report (a POSIX path)."""
    target = out / folder / Path(image).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    return target.relative_to(out).as_posix()


if __name__ == "__main__":
    print(json.dumps(str(run_demo())))
