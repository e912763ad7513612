"""The captioning task: config -> data -> tokenizer -> Captioner -> Trainer.

Example:
    >>> from polymodal.config import load_config
    >>> cfg = load_config(None, ["train.steps=50", "train.out_dir=runs/attention_lstm"])  # or a YAML file
    >>> cfg.model.decoder.name, cfg.train.steps
    ('attention_lstm', 50)
    >>> summary = train_captioner(cfg)  # trains; the best model: runs/attention_lstm/model  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..api import load_expecting
from ..config import ExperimentConfig
from ..data.cache import CachedCaptionDataset, feature_cache
from ..data.datasets import CaptionDataset, collate_captions, load_split
from ..data.records import SkipReport
from ..data.streams import open_stream
from ..errors import ConfigError
from ..eval.ood import save_model_stats
from ..generate import GenerationConfig
from ..models.captioner import Captioner, CaptionerControls
from ..registry import STREAMS
from ..text.tokenizer import WordTokenizer, split_words
from .controls import ControlsConfig, load_grown, with_controls
from .distributed import current, main_process_first
from .trainer import Trainer


@torch.inference_mode()
def caption_validation(model: Captioner, dataset: CaptionDataset | CachedCaptionDataset, batch_size: int = 64,
                       max_batches: int = 0, decode_images: int = 64) -> dict[str, float]:
    """Teacher-forced loss and token accuracy, and greedy exact match against any reference."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_captions)
    total_loss, correct, count = 0.0, 0, 0
    for batch in itertools.islice(loader, max_batches or None):
        if "tokens" not in batch:
            continue
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits, losses = model(batch)
        targets = batch["tokens"][:, 1:]
        mask = targets != model.tokenizer.pad_id
        n = int(mask.sum())
        total_loss += float(losses["caption_loss"]) * n
        correct += int(((logits.argmax(-1) == targets) & mask).sum())
        count += n
    metrics = {"loss": total_loss / max(count, 1), "token_accuracy": correct / max(count, 1)}
    if decode_images:
        metrics.update(decoded_metrics(model, dataset, decode_images))
    model.train()
    return metrics


def decoded_metrics(model: Captioner, dataset: CaptionDataset | CachedCaptionDataset, n_images: int) -> dict[str, float]:
    """Greedy captions of the first images: exact match with any reference, and CIDEr-D.

    CIDEr uses the simple (no-Java) tokenizer so that it is cheap enough for early stopping;
    reported results use `polymodal evaluate` with the PTB tokenizer.
    """
    from ..eval.caption_metrics import caption_metrics

    records = dataset.records[:n_images]
    inputs = {k: v.to(model.device) for k, v in dataset.model_inputs(list(range(len(records)))).items()}
    cfg = GenerationConfig(strategy="greedy", max_len=model.cfg.decoder.max_len)
    hyps = (model.generate_from_features(inputs["image_features"], cfg) if "image_features" in inputs
            else model.generate(inputs["images"], cfg))
    captions = {rec.id: model.tokenizer.decode(h[0].tokens) for rec, h in zip(records, hyps, strict=True)}
    hits = sum(any(split_words(captions[rec.id]) == split_words(ref) for ref in rec.captions) for rec in records)
    cider = caption_metrics(captions, {rec.id: rec.captions for rec in records}, cider_only=True,
                            tokenizer="simple")["cider"]
    return {"exact_match": hits / max(len(records), 1), "cider": cider}


@dataclass
class CaptioningExperimentConfig(ExperimentConfig):
    init_from: str = ""              # a trained captioner model or run dir to go on from (its sizes, vocabulary)
    controls: ControlsConfig = field(default_factory=ControlsConfig)  # trained caption controls (train/controls.py)


def train_captioner(cfg: CaptioningExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train a captioner as configured (a plain ExperimentConfig, `load_config`'s, trains without controls); the
    best model lands in `{train.out_dir}/model`."""
    if not isinstance(cfg, CaptioningExperimentConfig):
        cfg = CaptioningExperimentConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    report = SkipReport(source="training data")
    if cfg.data.format in STREAMS:  # shards: the vocabulary from the first captions; the images stream later
        train_records: list = []
        captions = open_stream(cfg.data, 1).captions(cfg.data.vocab_samples)
    else:
        with main_process_first():  # under torchrun, rank 0 writes Shapes World before the others read it
            train_records = load_split(cfg.data, cfg.data.train_split, report)
        captions = (c for r in train_records for c in r.captions)
    start = load_expecting(cfg.init_from, Captioner.architecture, "train one with `polymodal train "
                           "configs/transformer.yaml`, or leave init_from empty") if cfg.init_from else None
    model_cfg = copy.deepcopy(start.cfg if start is not None else cfg.model)
    tokenizer = start.tokenizer if start is not None else WordTokenizer.build(
        captions, min_count=cfg.data.min_count, max_size=cfg.data.max_vocab)
    controls, wrap = CaptionerControls(), None
    if cfg.controls.enabled:
        controls.kinds, tokenizer, wrap = with_controls(cfg.controls, cfg.data, model_cfg, tokenizer, cfg.seed)
        controls.grid, controls.marker = cfg.controls.grid, cfg.controls.marker and "focus" in controls.kinds
    torch.manual_seed(cfg.seed)
    model = Captioner(model_cfg, tokenizer)
    if controls.kinds:
        model.enable_controls(controls)
    if start is not None:
        tqdm.write(f"initialised from {cfg.init_from}: {load_grown(model, start.state_dict())} tensors")
    return fit_captioner(model, cfg, train_records, report, progress, stop_at, wrap_train=wrap)


def fit_captioner(model: Captioner, cfg: Any, train_records: list, report: SkipReport, progress: bool = True,
                  stop_at: int | None = None, wrap_train: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Build train/val datasets for `model` and run the Trainer; shared by every captioning task.
    `wrap_train` turns the training set into another (control prompts sampled per example, train/controls.py)."""
    with main_process_first():
        val_records = load_split(cfg.data, cfg.data.val_split, report)
    if cfg.data.format in STREAMS:
        if cfg.data.feature_cache:
            raise ConfigError(f"data.feature_cache needs an indexed dataset, not the stream data.format={cfg.data.format}")
        train_set = open_stream(cfg.data, model.cfg.image_size, model.tokenizer, report=report, seed=cfg.seed)
        val_set = CaptionDataset(val_records, model.tokenizer, model.cfg.image_size, cfg.data.max_len, True, report,
                                 progress)
    elif cfg.data.feature_cache:
        train_set, val_set = cached_datasets(model, cfg, train_records, val_records, report, progress)
    else:
        size, max_len, tokenizer = model.cfg.image_size, cfg.data.max_len, model.tokenizer
        train_set = CaptionDataset(train_records, tokenizer, size, max_len, cfg.data.preload, report, progress)
        val_set = CaptionDataset(val_records, tokenizer, size, max_len, cfg.data.preload, report, progress)
    if report.count:
        tqdm.write(report.summary())
    if wrap_train is not None:
        train_set = wrap_train(train_set)

    def evaluate(m: Captioner) -> dict[str, float]:
        return caption_validation(m, val_set, cfg.train.batch_size, cfg.train.eval_batches)

    trainer = Trainer(model, train_set, cfg.train, collate=collate_captions, save_model=model.write_files,
                      seed=cfg.seed, evaluate=evaluate, run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    best = Path(cfg.train.out_dir) / "model"
    if not summary.get("stopped_at") and current().is_main and (best / "config.json").is_file():
        summary["ood_threshold"] = save_model_stats(type(model).from_pretrained(best).eval(), best,
                                                    [r.image for r in train_records], [r.image for r in val_records])
    summary.update(vocab_size=len(model.tokenizer), train_pairs=len(train_set) if isinstance(train_set, Sized) else None,
                   skipped_records=report.count,
                   parameters=sum(p.numel() for p in model.parameters()),
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    return summary


def cached_datasets(model: Captioner, cfg: Any, train_records: list, val_records: list, report: SkipReport,
                    progress: bool) -> tuple[CachedCaptionDataset, CachedCaptionDataset]:
    """Train/val datasets of cached encoder features (`data.feature_cache: true`, frozen encoder only)."""
    if any(p.requires_grad for p in model.encoder.parameters()):
        raise ConfigError("data.feature_cache=true needs a frozen encoder (model.encoder.freeze=true): "
                          "a trained encoder changes its features every step")
    if type(model).forward is not Captioner.forward:
        raise ConfigError(f"data.feature_cache: {type(model).__name__} does not train from cached features; "
                          "use it with the captioning task")
    splits = []
    for records in (train_records, val_records):
        with main_process_first():  # rank 0 builds, the others then find the cache
            cache = feature_cache(model.encoder, records, model.cfg.image_size, cfg.data.feature_cache_dir,
                                  batch_size=max(cfg.train.batch_size, 64), num_workers=cfg.train.num_workers,
                                  progress=progress, report=report)
        if progress:
            tqdm.write(f"feature cache {'hit' if cache.hit else 'built'}: {cache.folder} "
                       f"{tuple(cache.features.shape)}")
        splits.append(CachedCaptionDataset(cache, model.tokenizer, cfg.data.max_len))
    return splits[0], splits[1]


train_captioner.config_cls = CaptioningExperimentConfig  # type: ignore[attr-defined]
