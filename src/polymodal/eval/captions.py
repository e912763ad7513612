"""Evaluate a captioner on a split: caption every image in batches, then score with `metrics`.

Results are written in the COCO results format (`[{"image_id", "caption"}]`), so they can be
re-scored later (`polymodal evaluate --results ...`) or sent to any COCO-style evaluation.

Example:
    >>> import tempfile
    >>> import polymodal
    >>> from polymodal.assets import bundled_model_dir
    >>> from polymodal.data.formats import read_records
    >>> from polymodal.data.shapes import write_shapes_world
    >>> model = polymodal.load(bundled_model_dir())  # the Shapes World captioner shipped in the package
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=20, image_size=64, progress=False)
    >>> records = read_records("coco", folder / "captions.json", split="test")
    >>> results, metrics = evaluate_captioner(model, records, GenerationConfig(beam_size=3), progress=False,
    ...                                       cider_only=True)  # all metrics: drop cider_only (METEOR: ~10 s)
    >>> path = write_coco_results(f"{tmp.name}/eval/results_test.json", results)
    >>> len(results), sorted(metrics), metrics["skipped_images"]
    (2, ['cider', 'images', 'skipped_images'], 0)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import write_json
from ..data.datasets import ImageDataset, collate_captions
from ..data.records import CaptionRecord, SkipReport
from ..errors import DataError, InputError
from ..generate import GenerationConfig
from .caption_metrics import caption_metrics, load_references, load_results
from .hallucination import ObjectTruth

log = logging.getLogger(__name__)


def caption_records(model: nn.Module, records: list[CaptionRecord], generation: GenerationConfig,
                    batch_size: int = 32, progress: bool = True,
                    feature_cache: str | Path | None = None) -> tuple[dict[str, str], SkipReport]:
    """Best caption for every record's image; images that fail to decode are skipped and reported.

    With `feature_cache` (a cache folder, see data/cache.py) the encoder's features come from the cache,
    built on first use: evaluating several decoders or decoding settings encodes the images once.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> import polymodal
        >>> from polymodal.assets import bundled_model_dir
        >>> model = polymodal.load(bundled_model_dir())
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (64, 64)).save(f"{tmp.name}/a.png")
        >>> _ = Path(tmp.name, "b.png").write_bytes(b"not an image")
        >>> records = [CaptionRecord(name, f"{tmp.name}/{name}.png", []) for name in ("a", "b")]
        >>> greedy = GenerationConfig(strategy="greedy")
        >>> results, report = caption_records(model, records, greedy, progress=False)
        >>> list(results), report.count  # b.png could not be read
        (['a'], 1)
        >>> tmp.cleanup()
    """
    if not records:
        raise InputError("no records to caption; check the data file and the split")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    report = SkipReport(source="evaluation images")
    if feature_cache is not None:
        return _caption_cached(model, records, generation, batch_size, progress, Path(feature_cache), report)
    dataset = ImageDataset(records, model.cfg.image_size, preload=False, report=report, progress=progress)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_captions)
    was_training = model.training
    model.eval()
    results: dict[str, str] = {}
    try:
        for batch in tqdm(loader, desc="captioning", disable=not progress, leave=False):
            if "images" not in batch:  # every image of this batch failed to decode
                continue
            hyps = model.generate(batch["images"].to(model.device), generation)
            for index, per_image in zip(batch["record"].tolist(), hyps, strict=True):
                results[dataset.records[index].id] = model.tokenizer.decode(per_image[0].tokens)
    finally:
        model.train(was_training)
    if report.count:
        log.warning(report.summary())
    if not results:
        raise DataError(f"no image could be read, nothing to evaluate; {report.summary()}")
    return results, report


def _caption_cached(model: nn.Module, records: list[CaptionRecord], generation: GenerationConfig, batch_size: int,
                    progress: bool, root: Path, report: SkipReport) -> tuple[dict[str, str], SkipReport]:
    from ..data.cache import feature_cache
    from ..models.captioner import Captioner

    if not isinstance(model, Captioner) or type(model).generate is not Captioner.generate:
        raise InputError(f"{type(model).__name__} does not caption from cached features; evaluate without a cache")
    cache = feature_cache(model.encoder, records, model.cfg.image_size, root, batch_size, progress=progress,
                          report=report)
    results: dict[str, str] = {}
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(cache), batch_size), desc="captioning", disable=not progress, leave=False):
        rows = list(range(start, min(start + batch_size, len(cache))))
        hyps = model.generate_from_features(cache.batch(rows).to(model.device), generation)
        for i, per_image in zip(rows, hyps, strict=True):
            results[cache.records[i].id] = model.tokenizer.decode(per_image[0].tokens)
    model.train(was_training)
    return results, report


def evaluate_captioner(model: nn.Module, records: list[CaptionRecord], generation: GenerationConfig,
                       batch_size: int = 32, progress: bool = True, cider_only: bool = False,
                       feature_cache: str | Path | None = None,
                       objects: ObjectTruth | None = None) -> tuple[dict[str, str], dict[str, float]]:
    """Caption every record's image and score the captions against the records' references.

    Args:
        model: a `Captioner` (anything with `generate`, `tokenizer`, `cfg.image_size`, `device`).
        records: the images and reference captions to evaluate on.
        generation: decoding settings (greedy / beam / sample, beam size, max length).
        batch_size: images per generation batch.
        progress: show tqdm bars.
        cider_only: score CIDEr-D only (no METEOR), for quick validation during training.
        feature_cache: a folder for the encoder feature cache (data/cache.py); None encodes every image.
        objects: the objects in each image; adds whether the captions are true (CHAIR-i, object recall, ...:
            eval/hallucination.py).

    Returns:
        (results, metrics): {record id: caption}, and the caption metrics plus "images" (captioned)
        and "skipped_images" (unreadable image files, left out of every metric).

    Example:
        CIDEr-D only (quick; the module example scores every metric), and whether the named objects exist:

        >>> import tempfile
        >>> import polymodal
        >>> from polymodal.assets import bundled_model_dir
        >>> from polymodal.data.formats import read_records
        >>> from polymodal.data.shapes import write_shapes_world
        >>> from polymodal.eval.hallucination import ObjectTruth
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=30, image_size=64, progress=False)
        >>> records = read_records("coco", folder / "captions.json", split="test")
        >>> _, metrics = evaluate_captioner(polymodal.load(bundled_model_dir()), records, GenerationConfig(),
        ...                                 progress=False, cider_only=True, objects=ObjectTruth.shapes(folder))
        >>> sorted(metrics)[:4], metrics["images"]
        (['binding_accuracy', 'captions', 'chair_i', 'chair_s'], 3)
        >>> tmp.cleanup()
    """
    results, report = caption_records(model, records, generation, batch_size, progress, feature_cache)
    references = {rec.id: rec.captions for rec in records if rec.id in results}
    metrics: dict[str, float] = dict(caption_metrics(results, references, cider_only=cider_only))
    if objects is not None:
        metrics.update(objects.score(results))
    metrics["images"] = len(results)
    metrics["skipped_images"] = report.count
    return results, metrics


def _coco_id(key: str) -> int | str:
    """COCO image ids are ints: "42" -> 42, but "007" or "img_1" stay strings (no lossy round trip)."""
    try:
        return int(key) if str(int(key)) == key else key
    except ValueError:
        return key


def write_coco_results(path: str | Path, results: Mapping[str, str]) -> Path:
    """Write {image id: caption} as a COCO results file, atomically.

    Example:
        >>> import json, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> results = {"42": "a red circle", "img_7": "a star"}
        >>> path = write_coco_results(f"{tmp.name}/eval/results_test.json", results)
        >>> json.loads(path.read_text())  # numeric ids become ints, as in COCO
        [{'image_id': 42, 'caption': 'a red circle'}, {'image_id': 'img_7', 'caption': 'a star'}]
        >>> tmp.cleanup()
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, [{"image_id": _coco_id(key), "caption": caption} for key, caption in results.items()])
    return path


def evaluate_results_file(results_path: str | Path, references: str | Path | Mapping[str, list[str]],
                          split: str | None = None, objects: ObjectTruth | None = None,
                          cider_only: bool = False) -> tuple[dict[str, str], dict[str, float]]:
    """Score a COCO results file made by any system against reference captions.

    Args:
        results_path: `[{"image_id", "caption"}]` JSON.
        references: a COCO captions file (image files are not needed), or {image id: [captions]}.
        split: with a references file, keep only its images of this split.
        objects: the objects in each image; adds the hallucination metrics (eval/hallucination.py).
        cider_only: score CIDEr-D only (no METEOR and its ~10 s Java start).

    Returns:
        (results, metrics): metrics include "images" (scored) and "reference_images" (available).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = write_coco_results(f"{tmp.name}/results.json", {"1": "a red circle", "2": "a blue star"})
        >>> references = {"1": ["a red circle", "a small red circle"], "2": ["a green star"], "3": ["a square"]}
        >>> _, metrics = evaluate_results_file(path, references, cider_only=True)
        >>> metrics["images"], metrics["reference_images"], metrics["cider"] > 0
        (2, 3, True)
        >>> tmp.cleanup()
    """
    if not isinstance(references, Mapping):
        references = load_references(references, split=split)
    results = load_results(results_path, references)
    metrics: dict[str, float] = dict(caption_metrics(results, {key: references[key] for key in results},
                                                     cider_only=cider_only))
    if objects is not None:
        metrics.update(objects.score(results))
    metrics["images"] = len(results)
    metrics["reference_images"] = len(references)
    return results, metrics


def metrics_table(metrics: Mapping[str, float]) -> str:
    """Two aligned columns, metric and value, for the terminal.

    Example:
        >>> print(metrics_table({"bleu1": 0.5, "images": 3}))
        metric     value
        bleu1     0.5000
        images         3
    """
    width = max(len("metric"), *(len(k) for k in metrics)) + 2
    rows = [f"{'metric':<{width}}{'value':>8}"]
    for key, value in metrics.items():
        text = str(value) if isinstance(value, int) else f"{value:.4f}"
        rows.append(f"{key:<{width}}{text:>8}")
    return "\n".join(rows)

