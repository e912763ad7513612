"""`polymodal train`, `caption`, `evaluate`, `data shapes` and `demo`: the captioning workflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .app import app, comma_numbers, data_app, warn_if_unlike
from .kinds import load_for

if TYPE_CHECKING:
    from ..eval.hallucination import ObjectTruth


@app.command()
def train(config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/attention_lstm.yaml"),
          overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.steps=500"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train a model from a YAML config; resumes from the run's last checkpoint if there is one.

    Under `torchrun --nproc_per_node=N -m polymodal train CONFIG` it trains with DistributedDataParallel.
    """
    from ..train import distributed
    from ..train.tasks import load_task_config

    task, cfg = load_task_config(config, overrides or [])
    with distributed.session() as env:
        summary = task(cfg, progress=not quiet)
    if env.is_main:
        typer.echo(json.dumps(summary, indent=2))


@app.command()
def caption(model_dir: Path = typer.Argument(..., help="model directory (or a training run directory)"),
            images: list[Path] = typer.Argument(..., help="image files"),
            beam: int = typer.Option(3, help="beam size; 1 = greedy"),
            nbest: int = typer.Option(1, help="captions per image (n-best from the beam)"),
            as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of text"),
            ban: str | None = typer.Option(None, "--ban", help="comma-separated words the captions must not say, "
                                           "e.g. red,blue, or a group: colours, shapes, sizes, positions"),
            force: str | None = typer.Option(None, "--force", help="comma-separated words every caption must say, "
                                             "e.g. red,circle (constrained beam search); a group (colours, ...) "
                                             "means any one of its words"),
            omit: str | None = typer.Option(None, "--omit", help="comma-separated words left out of what the model "
                                            "says, e.g. colours: 'a red circle' -> 'a circle' (for modifiers)"),
            heatmaps: Path | None = typer.Option(
                None, "--heatmaps", metavar="OUT_DIR",
                help="write attention heatmaps of the best caption into OUT_DIR/<image stem>/ (attention models)"),
            length: str | None = typer.Option(None, "--length", help="short | normal | detailed (a model trained "
                                              "with controls, configs/prefix_lm_controls.yaml)"),
            form: str | None = typer.Option(None, "--form", help="list (the objects, comma separated) | sentence "
                                            "(one relational sentence); a model trained with controls"),
            focus_point: str | None = typer.Option(None, "--focus-point", metavar="X,Y",
                                                   help="describe the object at this point, x and y in [0, 1]"),
            focus_box: str | None = typer.Option(None, "--focus-box", metavar="X0,Y0,X1,Y1",
                                                 help="describe the object in this box, coordinates in [0, 1]"),
            focus: str | None = typer.Option(None, "--focus", help="describe the object a phrase names, e.g. "
                                             "'the red one'"),
            max_new_words: int | None = typer.Option(None, "--max-new-words", help="word budget: every caption "
                                                     "ends within this many words (constrained decoding)"),
            ) -> None:
    """Caption images with a trained model."""
    from ..data.caption_controls import CaptionControls
    from ..models.word_controls import control_ids, word_budget

    banned_words, force_words, omit_words = _word_list("--ban", ban), _word_list("--force", force), \
        _word_list("--omit", omit)
    trained = CaptionControls(length, form, comma_numbers("--focus-point", focus_point, 2),
                              comma_numbers("--focus-box", focus_box, 4), focus)
    model = load_for("caption", model_dir)
    controls = control_ids(model.tokenizer, banned_words, force_words, omit_words)
    controls.update(word_budget(model.tokenizer, max_new_words))
    if trained.kinds:
        model.control_prompt(trained)  # a control the model was not trained with fails here, before any image
        if heatmaps is not None:
            from ..errors import InputError

            raise InputError(f"--heatmaps cannot be combined with --{trained.kinds[0]} yet; leave one out")
        controls.update((k, v) for k, v in vars(trained).items() if v is not None)
    strategy = "beam" if beam > 1 else "greedy"
    used_dirs: set[Path] = set()
    for path in images:
        check = warn_if_unlike(model, model_dir, [path], [str(path)], "the caption")[0]
        written: list[Path] = []
        if heatmaps is not None:
            from ..eval.viz import caption_heatmaps

            folder = _unique_dir(heatmaps / path.stem, used_dirs)
            results, written = caption_heatmaps(model, path, folder, strategy=strategy, beam_size=beam,
                                                num_return_sequences=min(nbest, beam), **controls)
        else:
            results = model.caption_nbest([path], strategy=strategy, beam_size=beam,
                                          num_return_sequences=min(nbest, beam), **controls)[0]
        if as_json:
            extra = {"heatmaps": [str(p) for p in written]} if heatmaps is not None else {}
            typer.echo(json.dumps({"image": str(path), "captions": results, **check, **extra}))
        else:
            typer.echo(f"{path}: {results[0]}" + "".join(f"\n    {c}" for c in results[1:]))
            if written:
                typer.echo(f"    heatmaps: {written[0].parent} ({len(written)} PNGs)")
    if getattr(model, "ood_stats", None) is None:  # said once, after the captions
        typer.echo(f"note: {model_dir} has no out-of-distribution statistics (saved before them), so the images "
                   f"were not checked against its training data", err=True)


def _word_list(flag: str, text: str | None) -> list[str]:
    """"red, circle" -> ["red", "circle"]; a flag given with no word at all is an error, not "no control"."""
    if text is None:
        return []
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        from ..errors import InputError

        raise InputError(f"{flag} {text!r} names no word; give comma-separated words, e.g. {flag} red,circle")
    return words



def _unique_dir(folder: Path, used: set[Path]) -> Path:
    """Two images with the same stem (a/x.png, b/x.png) get x/ and x-2/, not one shared folder."""
    candidate, n = folder, 1
    while candidate in used:
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    used.add(candidate)
    return candidate


@app.command()
def evaluate(
    model_dir: Path | None = typer.Argument(None, help="model directory; omit when scoring --results"),
    data: Path | None = typer.Option(None, help="annotation file; omit with --format shapes for the built-in "
                                     "Shapes World"),
    data_format: str | None = typer.Option(None, "--format", help="coco, karpathy, flickr, jsonl, csv or "
                                           "shapes (default: coco with --data or --references, else shapes)"),
    images: Path | None = typer.Option(None, help="image folder of --data (default: its folder)"),
    split: str | None = typer.Option(None, help="split to evaluate (default: test with a model; "
                                     "all references with --results)"),
    beam: int = typer.Option(3, help="beam size"),
    strategy: str | None = typer.Option(None, help="greedy or beam (default: beam if --beam > 1)"),
    batch_size: int = typer.Option(32, help="images per generation batch"),
    out: Path | None = typer.Option(None, help="output folder (default: MODEL_DIR/eval, or the results "
                                    "file's folder)"),
    results: Path | None = typer.Option(None, help="score this COCO results JSON instead of a model"),
    references: Path | None = typer.Option(None, help="reference captions for --results (COCO captions JSON)"),
    instances: Path | None = typer.Option(None, help="COCO instances JSON (instances_*.json): also score whether "
                                          "the objects a caption names are in the image (CHAIR); Shapes World "
                                          "folders are scored from their scenes without it"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Caption a split and score it (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, and whether the named objects exist:
    CHAIR-i / CHAIR-s, object recall), or score a results file."""
    from ..checkpoint import write_json
    from ..errors import InputError
    from ..eval.captions import metrics_table

    fmt = data_format or ("coco" if data is not None or references is not None else "shapes")
    if results is not None:
        if model_dir is not None:
            raise InputError("pass either MODEL_DIR or --results, not both")
        metrics, metrics_path = _evaluate_results(results, references, fmt, split, out, instances)
    elif model_dir is not None:
        metrics, metrics_path = _evaluate_model(model_dir, data, fmt, images, split or "test", beam, strategy,
                                                batch_size, out, instances, progress=not quiet)
    else:
        raise InputError("nothing to evaluate: pass MODEL_DIR, "
                         "or --results RESULTS.json --references CAPTIONS.json")
    write_json(metrics_path, metrics)
    typer.echo(metrics_table(metrics))
    typer.echo(f"wrote {metrics_path}")


def _object_truth(annotations: Path | None, instances: Path | None) -> ObjectTruth | None:
    """What the images hold: a COCO instances file, else the scenes of a Shapes World folder, else unknown."""
    from ..eval.hallucination import ObjectTruth

    if instances is not None:
        return ObjectTruth.coco(instances)
    scenes = annotations.parent / "scenes.jsonl" if annotations is not None else None
    return ObjectTruth.shapes(scenes) if scenes is not None and scenes.is_file() else None


def _evaluate_results(results: Path, references: Path | None, fmt: str, split: str | None,
                      out: Path | None, instances: Path | None) -> tuple[dict, Path]:
    from ..errors import InputError
    from ..eval.captions import evaluate_results_file

    if fmt == "shapes" and references is None:
        from ..config import DataConfig
        from ..data.datasets import shapes_folder

        references = shapes_folder(DataConfig(format="shapes")) / "captions.json"
    if references is None:
        raise InputError("--results needs --references CAPTIONS.json (or --format shapes for Shapes World)")
    if fmt not in ("coco", "shapes"):
        raise InputError(f"--references must be a COCO captions file, got --format {fmt}")
    _, metrics = evaluate_results_file(results, references, split=split,
                                       objects=_object_truth(references, instances))
    name = results.stem.removeprefix("results_")
    folder = out if out is not None else results.parent
    folder.mkdir(parents=True, exist_ok=True)
    return metrics, folder / f"metrics_{name}.json"


def _evaluate_model(model_dir: Path, data: Path | None, fmt: str, images: Path | None, split: str, beam: int,
                    strategy: str | None, batch_size: int, out: Path | None, instances: Path | None,
                    progress: bool) -> tuple[dict, Path]:
    from ..config import DataConfig
    from ..data.datasets import load_split, shapes_folder
    from ..eval.captions import evaluate_captioner, write_coco_results
    from ..generate import GenerationConfig

    if fmt == "shapes" and data is not None:  # a Shapes World folder on disk: its captions.json is COCO
        fmt, data = "coco", (data / "captions.json" if data.is_dir() else data)
    model = load_for("evaluate", model_dir)
    cfg = DataConfig(format=fmt, path=str(data) if data is not None else None,
                     images=str(images) if images is not None else None)
    records = load_split(cfg, split)
    generation = GenerationConfig(strategy=strategy or ("beam" if beam > 1 else "greedy"), beam_size=beam,
                                  max_len=model.cfg.decoder.max_len)
    annotations = shapes_folder(cfg) / "captions.json" if fmt == "shapes" else data
    results, metrics = evaluate_captioner(model, records, generation, batch_size=batch_size, progress=progress,
                                          objects=_object_truth(annotations, instances))
    folder = out if out is not None else model_dir / "eval"
    write_coco_results(folder / f"results_{split}.json", results)
    return metrics, folder / f"metrics_{split}.json"


@data_app.command("shapes")
def data_shapes(out: Path = typer.Option(..., help="output folder"),
                n: int = typer.Option(5000, help="images in train+val+test (heldout comes on top)"),
                seed: int = typer.Option(0), size: int = typer.Option(128, help="image size in pixels")) -> None:
    """Write Shapes World to disk: images, COCO captions JSON, QA JSONL."""
    from ..data.shapes import write_shapes_world

    folder = write_shapes_world(out, n=n, seed=seed, image_size=size)
    typer.echo(f"wrote Shapes World to {folder} (captions.json, qa.jsonl, images/)")


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="where the demo writes its report"),
         n: int = typer.Option(5000, help="Shapes World images in train+val+test (fewer: a quicker demo)")) -> None:
    """The main job: Shapes World, a trained captioner, captions beside their references."""
    from ..errors import InputError
    from .demo import run_demo

    if n < 30:
        raise InputError("--n must be at least 30 (the test split is a tenth of it)")
    run_demo(out, n=n)


@data_app.command("outside")
def data_outside(out: Path = typer.Option(..., help="output folder"),
                 n: int = typer.Option(3000, help="images in train+val+test (80/10/10)"),
                 seed: int = typer.Option(0), size: int = typer.Option(64, help="image size in pixels"),
                 quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """Write the outside test bed (not Shapes World): images, COCO + Karpathy captions, VQA-style qa.jsonl."""
    from ..data.outside import write_outside
    from .app import out_folder

    folder = write_outside(out_folder(out), n=n, seed=seed, image_size=size, progress=not quiet)
    typer.echo(f"wrote the outside test bed to {folder} (captions.json, dataset_karpathy.json, qa.jsonl, images/)")
