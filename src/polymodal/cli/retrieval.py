"""`polymodal index`, `retrieve`, `zeroshot` and `retrieval-eval` (registered on the main app).

    polymodal index runs/contrastive/model shapes/images/test --out test.index
    polymodal index photos/ --model clip-vit-base-patch32/ --out photos.index   # pretrained CLIP weights
    polymodal retrieve test.index "a red circle above a blue square" -k 5
    polymodal index runs/contrastive/model --captions captions.json --out captions.index
    polymodal retrieve captions.index --image scene.png -k 3
    polymodal zeroshot runs/contrastive/model --task shape
    polymodal retrieval-eval runs/contrastive/model --n 10000
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app
from .kinds import load_for


@app.command()
def index(model_dir: Path = typer.Argument(..., help="dual encoder model directory or CLIP folder (or, with "
                                          "--model, the folder of images)"),
          images_dir: Path | None = typer.Argument(None, help="folder of images (searched recursively)"),
          out: Path = typer.Option(..., "--out", help="index folder to write"),
          model_option: Path | None = typer.Option(None, "--model", help="the model (a dual encoder or a CLIP folder, "
                                            "docs/pretrained.md); then the first argument is the images folder"),
          captions: Path | None = typer.Option(None, help="index captions instead: .txt (one a line), "
                                               "JSON list or COCO captions JSON"),
          batch_size: int = typer.Option(128, help="images per batch"),
          feature_cache: Path | None = typer.Option(None, help="cache the image encoder's features in this "
                                                    "folder and reuse them on the next run (data/cache.py)"),
          copy_images: bool = typer.Option(False, help="copy the images into the index folder, with every path "
                                           "relative to it: a folder that can be moved or shipped"),
          quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """Embed a folder of images (or a caption file) into a retrieval index."""
    from ..errors import InputError
    from ..eval.retrieval import build_image_index, build_text_index, read_caption_file

    if model_option is not None:
        if images_dir is not None or captions is not None:
            raise InputError("with --model MODEL pass only IMAGES_DIR: polymodal index IMAGES_DIR --model MODEL")
        model_dir, images_dir = model_option, model_dir
    if (images_dir is None) == (captions is None):
        raise InputError("pass either IMAGES_DIR or --captions FILE")
    model = load_for("index", model_dir)
    if captions is not None:
        idx = build_text_index(model, read_caption_file(captions), model_dir, source=str(captions))
        skipped = ""
    else:
        idx, report = build_image_index(model, images_dir, batch_size, progress=not quiet, model_dir=model_dir,
                                        feature_cache=feature_cache)
        skipped = f"; {report.summary()}" if report.count else ""
    idx.save(out, copy_images=copy_images)
    typer.echo(f"indexed {len(idx.items)} {idx.kind}s into {out}{skipped}")


@app.command()
def retrieve(index_dir: Path = typer.Argument(..., metavar="INDEX", help="index folder from `polymodal index`"),
             query: str | None = typer.Argument(None, help="text query, e.g. 'a red circle above a square'"),
             k: int = typer.Option(5, "-k", help="how many results"),
             image: Path | None = typer.Option(None, help="query with an image instead of text"),
             model_dir: Path | None = typer.Option(None, "--model", help="model directory (default: the "
                                                   "one that built the index)"),
             as_json: bool = typer.Option(False, "--json", help="print JSON instead of text")) -> None:
    """The best items of an index for a text or image query, with cosine scores."""
    from ..errors import InputError
    from ..eval.retrieval import RetrievalIndex

    if (query is None) == (image is None):
        raise InputError("pass either a text QUERY or --image IMAGE")
    idx = RetrievalIndex.load(index_dir)
    source = model_dir or idx.info.get("model", {}).get("dir")
    if source is None:
        raise InputError(f"{index_dir}: the index does not name its model; pass --model MODEL_DIR")
    model = load_for("retrieve", Path(source))
    idx.check_model(model, str(index_dir))
    emb = model.embed_images([image]) if image is not None else model.embed_texts([query])
    results = idx.search(emb, k)[0]
    if as_json:
        typer.echo(json.dumps([{"item": item, "score": round(score, 4)} for item, score in results]))
        return
    for rank, (item, score) in enumerate(results, 1):
        typer.echo(f"{rank:>3}  {score:+.3f}  {item}")


@app.command()
def zeroshot(model_dir: Path = typer.Argument(..., help="dual encoder model directory or CLIP folder"),
             task: str = typer.Option("shape", help="shape or colour"),
             data: Path | None = typer.Option(None, help="Shapes World folder (default: the n=10000 one, "
                                              "written on first use)"),
             split: str = typer.Option("test", help="split whose one-object images are classified"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Zero-shot shape or colour classification of one-object Shapes World images, by prompts alone."""
    from ..config import DataConfig
    from ..data.datasets import shapes_folder
    from ..eval.zero_shot import zero_shot_accuracy

    folder = data if data is not None else shapes_folder(DataConfig(format="shapes", n=10000))
    result = zero_shot_accuracy(load_for("zeroshot", model_dir), folder, task, split, progress=True)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"zero-shot {task}: accuracy {100 * result['accuracy']:.1f}% on {result['images']} one-object "
               f"{split} images (chance {100 * result['chance']:.1f}%)")
    typer.echo("  " + ", ".join(f"{c} {100 * a:.0f}%" for c, a in result["per_class"].items()))


@app.command("retrieval-eval")
def retrieval_eval(model_dir: Path = typer.Argument(..., help="dual encoder model directory"),
                   n: int = typer.Option(10000, help="Shapes World size (test split = n // 10 images)"),
                   split: str = typer.Option("test"),
                   data: Path | None = typer.Option(None, help="COCO-style captions JSON instead of Shapes World"),
                   data_format: str = typer.Option("coco", "--format", help="format of --data"),
                   images: Path | None = typer.Option(None, help="image folder of --data"),
                   paraphrased: bool = typer.Option(False, "--paraphrase", help="swap caption words for synonyms "
                                                    "never seen in training (crimson disc, cobalt box, ...)")) -> None:
    """Image<->text Recall@1/5/10 and ranks on a captioned split: strict, identical-caption-aware and,
    on Shapes World, true-of-the-image (any caption the grammar can say of the image is right), and how
    often an image prefers its caption to a hard negative one (colours swapped, a count changed, ...)."""
    from ..config import DataConfig
    from ..data.datasets import ImageStore, load_split, shapes_folder
    from ..data.shapes import WORD_GROUPS
    from ..eval.retrieval_scores import (
        evaluate_retrieval,
        hard_negative_accuracy,
        paraphrase,
        retrieval_ceiling,
        shapes_relevance,
    )
    from ..text.perturb import CaptionPerturber

    cfg = DataConfig(format="shapes", n=n) if data is None else DataConfig(
        format=data_format, path=str(data), images=str(images) if images else None)
    records = load_split(cfg, split)
    # Shapes World knows every caption true of each image: score "true of the image" as well
    relevance = shapes_relevance(records, shapes_folder(cfg)) if data is None else None
    model = load_for("retrieval-eval", model_dir)
    store = ImageStore(records, model.cfg.image_size, True)  # decoded once for both evaluations
    result = evaluate_retrieval(model, records, rewrite=paraphrase if paraphrased else None, relevance=relevance,
                                store=store)
    result["strict_ceiling"] = retrieval_ceiling(records)
    if data is None:  # image vs hard negative captions made from Shapes World's interchangeable words
        result["hard_negative_captions"] = hard_negative_accuracy(model, records, CaptionPerturber(WORD_GROUPS),
                                                                  store=store)
    typer.echo(json.dumps(result, indent=1))
