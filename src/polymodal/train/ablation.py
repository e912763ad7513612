"""`polymodal ablate fusion`: every fusion variant trained with the same budget and seeds, compared.

Protocol: one VQA config (default configs/vqa.yaml); its image encoder is pretrained once on Shapes
World scene attributes, frozen, and every image is encoded once, so all variants see exactly the same
region features and only the question encoder, fusion and classifier are trained. Each variant x seed
trains for the same number of steps with the same batches (the data order depends on the seed only).
Each model is scored on the test split (per question type), the held-out-composition split, and two
robustness probes on test: the image blanked (every image replaced by an empty background, so the
question alone is left) and the question words shuffled.

The markdown table goes between the `<!-- ablation:begin -->` / `<!-- ablation:end -->` markers of
the output file (text outside them, such as an interpretation, is kept); the raw numbers go to a
JSON file and a bar plot to a PNG beside it.

Example:
    >>> from polymodal.config import load_config
    >>> base = load_config(None, ["data.n=1000"], cls=VQAExperimentConfig)  # or "configs/vqa.yaml"
    >>> variants = ["concat_linear", "cross_attention"]
    >>> results = run_fusion_ablation(base, variants, seeds=1, steps=50)  # trains each  # doctest: +SKIP
    >>> [(r["variant"], r["seed"]) for r in results]  # doctest: +SKIP
    [('concat_linear', 0), ('cross_attention', 0)]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import write_json
from ..data.images import image_to_uint8
from ..data.qa import QARecord, encode_images
from ..models.vqa import VQAModel
from ..registry import FUSION
from ..text.tokenizer import split_words
from .answer_pretraining import choose_pretraining
from .pretraining import pretrain_region_encoder
from .vqa import (
    VQAData,
    VQAExperimentConfig,
    evaluate_vqa,
    fit_vqa,
    prepare_vqa,
    qa_dataset,
)

BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
TYPES = ("colour", "shape", "count", "position", "yes/no")
BLANK_BACKGROUND = (44, 44, 44)  # the mean Shapes World background: a scene with no objects


def shuffled_questions(records: list[QARecord], seed: int = 0) -> list[QARecord]:
    """The same records with the words of each question in a random order (a noisy text modality).

    Example:
        >>> shuffled_questions([QARecord("1", "a.png", "what colour is the star?", ["red"])])[0].question
        'is colour what star the'
    """
    rng = random.Random(seed)
    out = []
    for rec in records:
        words = split_words(rec.question)
        rng.shuffle(words)
        out.append(dataclasses.replace(rec, question=" ".join(words)))
    return out


def blank_features(model: VQAModel) -> torch.Tensor:
    """Region features (N, C) of an empty background image (the missing-image probe)."""
    from PIL import Image

    size = model.cfg.image_size
    image = image_to_uint8(Image.new("RGB", (size, size), BLANK_BACKGROUND), size)
    return encode_images(model.encoder, image[None])[0]


def run_one(base: VQAExperimentConfig, data: VQAData, model_cfg: Any, variant: str, seed: int,
            out_dir: Path, progress: bool) -> dict[str, Any]:
    """Train one variant with one seed and score it on every probe."""
    cfg = copy.deepcopy(base)
    cfg.seed, cfg.train.out_dir = seed, str(out_dir)
    cfg.model = dataclasses.replace(model_cfg, fusion=dataclasses.replace(model_cfg.fusion, name=variant))
    torch.manual_seed(seed)
    model = VQAModel(cfg.model, data.tokenizer, data.answers)
    summary = fit_vqa(model, data, cfg, progress=progress, validate=False)
    blank = blank_features(model)
    test = data.splits["test"]
    return {
        "variant": variant, "level": model.fusion.level, "seed": seed, "seconds": summary["seconds"],
        "parameters": summary["trainable_parameters"],
        "test": evaluate_vqa(model, qa_dataset(model, data, "test")),
        "heldout": evaluate_vqa(model, qa_dataset(model, data, "heldout")),
        "blank_image": evaluate_vqa(model, qa_dataset(model, data, "test", bank=lambda i: blank)),
        "shuffled_question": evaluate_vqa(model, qa_dataset(model, data, "test", records=shuffled_questions(test, seed))),
    }


_WORKER: dict[str, Any] = {}


def _prepare(base: VQAExperimentConfig, progress: bool) -> tuple[Any, VQAData]:
    model0, data = prepare_vqa(base, progress)
    return model0.cfg, data


def _init_worker(config: dict[str, Any], threads: int) -> None:
    """Each worker process reads the data and encodes the images once, then trains many runs."""
    from ..config import from_dict

    torch.set_num_threads(threads)
    base = from_dict(VQAExperimentConfig, config)
    _WORKER["base"] = base
    _WORKER["model_cfg"], _WORKER["data"] = _prepare(base, progress=False)


def _worker_run(variant: str, seed: int, out_dir: str) -> str:
    r = run_one(_WORKER["base"], _WORKER["data"], _WORKER["model_cfg"], variant, seed, Path(out_dir), False)
    return json.dumps(r)  # plain JSON across the process boundary


def run_fusion_ablation(base: VQAExperimentConfig, variants: list[str] | None = None, seeds: int = 3,
                        steps: int = 600, progress: bool = True, workers: int = 1,
                        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every variant with every seed (same steps, batches and features); one result per run.

    With `workers` > 1, runs are spread over that many processes (one torch thread each); every
    process encodes the images itself, so the features are identical everywhere.
    """
    variants = variants or FUSION.names()
    for v in variants:
        FUSION.get(v)  # unknown names fail before any training, with a did-you-mean
    base = copy.deepcopy(base)
    base.train = dataclasses.replace(base.train, steps=steps, eval_every=0, checkpoint_every=0,
                                     log_every=max(steps, 1), early_stop_patience=0)
    base.data.test_splits = ["test", "heldout"]
    started = time.time()
    jobs = [(v, seed) for seed in range(seeds) for v in variants]
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        log(f"{r['variant']:16s} seed {r['seed']}: test {r['test']['accuracy']:.3f} heldout "
            f"{r['heldout']['accuracy']:.3f} blank {r['blank_image']['accuracy']:.3f} shuffled "
            f"{r['shuffled_question']['accuracy']:.3f} ({r['seconds']:.0f}s)")

    with tempfile.TemporaryDirectory(prefix="polymodal-ablation-") as tmp:
        if workers <= 1:
            model_cfg, data = _prepare(base, progress)
            log(f"data ready in {time.time() - started:.0f}s: {len(data.splits['train'])} training questions, "
                f"{len(data.answers)} answers")
            for v, seed in jobs:
                report(run_one(base, data, model_cfg, v, seed, Path(tmp) / f"{v}-{seed}", progress))
        else:
            if choose_pretraining(base.pretrain, base.data.format) == "regions":  # once (cached), before the workers
                pretrain_region_encoder(base.model.encoder, base.model.image_size, base.data, base.pretrain,
                                        base.seed, progress)
            context = multiprocessing.get_context("spawn")  # fork is unsafe once torch threads exist
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(dataclasses.asdict(base), 1)) as pool:
                futures = [pool.submit(_worker_run, v, seed, str(Path(tmp) / f"{v}-{seed}")) for v, seed in jobs]
                for future in as_completed(futures):
                    report(json.loads(future.result()))
    order = {job: i for i, job in enumerate(jobs)}
    results.sort(key=lambda r: order[(r["variant"], r["seed"])])
    log(f"ablation done in {(time.time() - started) / 60:.1f} min")
    return results


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: mean and std over seeds of every figure."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r["variant"], {"variant": r["variant"], "level": r["level"], "values": {}})
        for key, value in _figures(r).items():
            row["values"].setdefault(key, []).append(value)
    for row in rows.values():
        row["mean"] = {k: statistics.fmean(v) for k, v in row["values"].items()}
        row["std"] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in row["values"].items()}
    # feature level first, then decision level; each best first on test
    return sorted(rows.values(), key=lambda r: (r["level"] != "feature", -r["mean"]["test"]))


def _figures(r: dict[str, Any]) -> dict[str, float]:
    out = {"test": r["test"]["accuracy"], "heldout": r["heldout"]["accuracy"],
           "blank": r["blank_image"]["accuracy"], "shuffled": r["shuffled_question"]["accuracy"],
           "seconds": r["seconds"], "parameters": r["parameters"]}
    out.update({t: r["test"].get(f"accuracy/{t}", float("nan")) for t in TYPES})
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy (%) mean ± std over seeds, parameters and training time per variant."""
    cols = ["test", *TYPES, "heldout", "blank", "shuffled"]
    head = ("| fusion | level | test | " + " | ".join(TYPES) + " | heldout | image blanked | words shuffled "
            "| trainable params | train s |")
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    best = max(rows, key=lambda r: r["mean"]["test"])["variant"] if rows else None
    for r in rows:
        cells = [f"{100 * r['mean'][c]:.1f} ± {100 * r['std'][c]:.1f}" for c in cols]
        name = f"**{r['variant']}**" if r["variant"] == best else r["variant"]
        lines.append(f"| {name} | {r['level']} | " + " | ".join(cells)
                     + f" | {int(r['mean']['parameters']):,} | {r['mean']['seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: test, heldout, image blanked, words shuffled accuracy per variant, with std."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    keys = [("test", "test"), ("heldout", "held-out compositions"), ("blank", "image blanked"),
            ("shuffled", "words shuffled")]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.2))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r["mean"][key] for r in rows], width, yerr=[100 * r["std"][key] for r in rows],
               label=label, capsize=2)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("VQA accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Fusion ablation on Shapes World (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: list[dict[str, Any]], out: Path, setup: dict[str, Any]) -> None:
    """Write the table into `out` (between the markers), the PNG and the raw JSON beside it."""
    rows = summarize(results)
    png, raw = out.with_suffix(".png"), out.with_suffix(".json")
    plot(rows, png)
    write_json(raw, {"setup": setup, "runs": results})
    best = max(rows, key=lambda r: r["mean"]["test"])
    block = "\n".join([
        BEGIN,
        f"Generated by `{setup['command']}` on {setup['date']} ({setup['minutes']:.1f} min, "
        f"{setup.get('workers', 1)} process(es) x {setup['threads']} CPU thread(s)). Accuracy in %, mean ± std over "
        f"{setup['seeds']} seeds; "
        f"{setup['steps']} steps of {setup['batch_size']} questions per run; raw numbers in `{raw.name}`.",
        "", markdown_table(rows), "",
        f"Best on test: **{best['variant']}** ({100 * best['mean']['test']:.1f} %, held-out compositions "
        f"{100 * best['mean']['heldout']:.1f} %).", "", f"![fusion ablation]({png.name})", END])
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "# Fusion ablation\n\n") + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def setup_record(base: VQAExperimentConfig, command: str, seeds: int, steps: int, minutes: float,
                 workers: int = 1) -> dict[str, Any]:
    return {"command": command, "date": time.strftime("%Y-%m-%d"), "minutes": minutes, "seeds": seeds,
            "steps": steps, "batch_size": base.train.batch_size, "threads": torch.get_num_threads(),
            "workers": workers, "config": dataclasses.asdict(base)}


def ablation_json(path: Path) -> list[dict[str, Any]]:
    """Read back the runs written by `write_report`."""
    return json.loads(path.read_text(encoding="utf-8"))["runs"]
