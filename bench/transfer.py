"""Cross-modal transfer: does a contrastively trained image encoder help a captioner learn from few captions?

    python bench/transfer.py --encoder runs/contrastive/image_encoder.safetensors [--steps 400]

Trains attention-LSTM captioners on Shapes World (n=10000, 48 px, small_cnn width 16: the image tower
of configs/contrastive.yaml) with 5%, 20% and 100% of the caption training images, all for the same
number of steps, from four starting points:

- random_frozen:        random image encoder, frozen (what the decoder gets from untrained features)
- captions_only:        random image encoder trained end to end on the captions alone
- contrastive_frozen:   the contrastive image tower, frozen
- contrastive_finetune: the contrastive image tower, trained further on the captions

Each run is validated every `--eval-every` steps (greedy CIDEr-D on 64 validation images) and scored
at the end on the test split (greedy, CIDEr-D with the PTB tokenizer). Results are cached in
runs/transfer/results.json (a finished run is not repeated), then written to docs/transfer.md and
docs/transfer.png (the table goes between the `bench:transfer` markers of docs/transfer.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, write_section  # noqa: E402

from polymodal.config import (  # noqa: E402
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,  # noqa: E402
)
from polymodal.data.datasets import load_split  # noqa: E402
from polymodal.data.records import SkipReport  # noqa: E402
from polymodal.eval.caption_metrics import caption_metrics  # noqa: E402
from polymodal.eval.captions import caption_records  # noqa: E402
from polymodal.generate import GenerationConfig  # noqa: E402
from polymodal.models.captioner import Captioner  # noqa: E402
from polymodal.text.tokenizer import WordTokenizer  # noqa: E402
from polymodal.train.captioning import fit_captioner  # noqa: E402

CONDITIONS = {  # name -> (use the contrastive encoder, freeze the encoder)
    "random_frozen": (False, True),
    "captions_only": (False, False),
    "contrastive_frozen": (True, True),
    "contrastive_finetune": (True, False),
}
FRACTIONS = (0.05, 0.2, 1.0)


def run_one(name: str, fraction: float, args: argparse.Namespace, records: list, tokenizer: WordTokenizer) -> dict:
    """Train one captioner; return its validation curve and test CIDEr-D."""
    pretrained, freeze = CONDITIONS[name]
    out = Path(args.out) / f"{name}-{int(fraction * 100)}"
    cfg = ExperimentConfig(
        seed=args.seed,
        model=ModelConfig(image_size=48, encoder=EncoderConfig(
            name="small_cnn", width=16, freeze=freeze, pretrained=args.encoder if pretrained else None),
            decoder=DecoderConfig(name="attention_lstm", embed_dim=64, hidden_dim=128, attention_dim=64,
                                  dropout=0.1, doubly_stochastic=0.02, max_len=24)),
        data=DataConfig(format="shapes", n=10000, seed=0),
        train=TrainConfig(out_dir=str(out), steps=args.steps, batch_size=32, lr=2e-3, warmup_steps=50,
                          eval_every=args.eval_every, eval_batches=4, checkpoint_every=args.steps,
                          early_stop_metric="cider", log_every=50))
    subset = random.Random(args.seed).sample(records, max(1, round(fraction * len(records))))
    torch.manual_seed(args.seed)
    model = Captioner(cfg.model, tokenizer)  # one vocabulary (all training captions) for every run
    started = time.time()
    fit_captioner(model, cfg, subset, SkipReport(source="train"), progress=False)
    seconds = time.time() - started
    curve = [(r["step"], r["val_cider"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if "val_cider" in r]
    test = load_split(cfg.data, "test")[: args.test_images]
    # The model after the last step, not the best one: "CIDEr at equal steps".
    captions, _ = caption_records(model.eval(), test, GenerationConfig(strategy="greedy", max_len=24), 64, False)
    cider = caption_metrics(captions, {r.id: r.captions for r in test}, cider_only=True)["cider"]
    return {"condition": name, "fraction": fraction, "train_images": len(subset), "steps": args.steps,
            "curve": curve, "test_cider": cider, "seconds": round(seconds, 1)}


def _rows(table: dict, fractions: tuple[float, ...]) -> str:
    return "\n".join(f"| {name} | " + " | ".join(f"{table[name, f]['test_cider']:.3f}" if (name, f) in table else "-"
                                               for f in fractions) + " |"
                     for name in CONDITIONS if any((name, f) in table for f in fractions))


def write_report(results: list[dict], args: argparse.Namespace, long: list[dict]) -> None:
    """docs/transfer.png (CIDEr vs data; val curves at 5%; long-run curves) and the table section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = {(r["condition"], r["fraction"]): r for r in results}
    fig, axes = plt.subplots(1, 3 if long else 2, figsize=(16 if long else 11, 4))
    left, right = axes[0], axes[1]
    colours = {name: f"C{i}" for i, name in enumerate(CONDITIONS)}
    for name in CONDITIONS:
        xs = [f for f in FRACTIONS if (name, f) in table]
        left.plot([100 * f for f in xs], [table[name, f]["test_cider"] for f in xs], marker="o", label=name,
                  color=colours[name])
        if (name, FRACTIONS[0]) in table:
            steps, cider = zip(*table[name, FRACTIONS[0]]["curve"], strict=True)
            right.plot(steps, cider, marker=".", label=name, color=colours[name])
    for r in long:
        steps, cider = zip(*r["curve"], strict=True)
        axes[2].plot(steps, cider, marker=".", color=colours[r["condition"]], linestyle="-" if r["fraction"] < 1 else ":",
                     label=f"{r['condition']}, {int(100 * r['fraction'])}%")
    left.set(xscale="log", xlabel="% of caption training images", ylabel="test CIDEr-D (greedy)",
             title=f"after {args.steps} steps")
    left.set_xticks([5, 20, 100], ["5%", "20%", "100%"])
    right.set(xlabel="step", ylabel="val CIDEr-D (64 images)", title=f"learning curve, {int(100 * FRACTIONS[0])}% of captions")
    if long:
        axes[2].set(xlabel="step", ylabel="val CIDEr-D (64 images)", title=f"longer runs ({long[0]['steps']} steps)")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "transfer.png", dpi=110)
    long_table = {(r["condition"], r["fraction"]): r for r in long}
    extra = (f"\n\nLonger runs ({long[0]['steps']} steps, same settings otherwise; `--steps {long[0]['steps']} "
             f"--out {args.long_out}`):\n\n| image encoder | 5% | 20% | 100% |\n|---|---|---|---|\n"
             f"{_rows(long_table, FRACTIONS)}") if long else ""
    write_section("transfer", f"""
| image encoder | 5% | 20% | 100% |
|---|---|---|---|
{_rows(table, FRACTIONS)}

Test CIDEr-D (greedy, PTB tokenizer, {args.test_images} test images) after {args.steps} steps of batch 32,
seed {args.seed}; {machine()}. Regenerate with `python bench/transfer.py`.{extra}
""", path=DOCS / "transfer.md", figures={f"{r['condition']}, {100 * r['fraction']:g}%": r["test_cider"] for r in results},
        described={f"{r['condition']}, {100 * r['fraction']:g}%": {"what": "test CIDEr-D (greedy)", "format": ".3f",
                                                                   "unit": ""} for r in results})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="runs/contrastive/image_encoder.safetensors")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated subset")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="comma-separated subset")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the docs from cached results")
    parser.add_argument("--long-out", default="runs/transfer_long", help="results of longer runs to plot too")
    args = parser.parse_args()
    cache = Path(args.out) / "results.json"
    results = json.loads(cache.read_text()) if cache.exists() else []
    if not args.report_only:
        records = load_split(DataConfig(format="shapes", n=10000, seed=0), "train")
        tokenizer = WordTokenizer.build(c for r in records for c in r.captions)
        for name in args.conditions.split(","):
            for fraction in map(float, args.fractions.split(",")):
                if any(r["condition"] == name and r["fraction"] == fraction for r in results):
                    continue
                if CONDITIONS[name][0] and not Path(args.encoder).is_file():
                    # `make bench` runs every script: say what is missing instead of failing the whole target
                    print(f"skipped {name}: no {args.encoder}; run `polymodal train configs/contrastive.yaml`")
                    continue
                result = run_one(name, fraction, args, records, tokenizer)
                print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
                results = [*json.loads(cache.read_text()), result] if cache.exists() else [result]
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(results, indent=1))
    if results and args.out == parser.get_default("out"):  # other --out folders are side experiments
        long_cache = Path(args.long_out) / "results.json"
        write_report(results, args, json.loads(long_cache.read_text()) if long_cache.exists() else [])


if __name__ == "__main__":
    main()
