"""The contrastive (CLIP-style) image-text training task (registered in registry.TASKS).

config -> caption records -> word vocabulary -> DualEncoder -> generic Trainer on (image, caption)
pairs, validated by image<->text Recall@K on the validation split. When training ends, the best
model is scored on the test split and its image tower is exported as
`{out_dir}/image_encoder.safetensors`, ready for `model.encoder.pretrained=...` in a captioner.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=contrastive", "train.steps=100"])  # or a YAML file
    >>> task is train_contrastive
    True
    >>> task(cfg)["test"]["strict"]["t2i_r1"]  # trains for minutes  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import DataConfig, TrainConfig
from ..data.datasets import ImageStore, collate_captions, load_split
from ..data.records import CaptionRecord, SkipReport
from ..data.streams import open_stream
from ..errors import ConfigError
from ..eval.ood import save_model_stats
from ..eval.retrieval_scores import evaluate_retrieval
from ..models.dual_encoder import DualEncoder, DualEncoderConfig
from ..registry import STREAMS
from ..text.perturb import CaptionPerturber
from ..text.tokenizer import WordTokenizer
from .distributed import current
from .similar_batches import SimilarCaptionOrder
from .trainer import Trainer, param_groups


@dataclass
class ContrastiveTrainConfig(TrainConfig):
    out_dir: str = "runs/contrastive"
    batch_size: int = 128             # InfoNCE: every other pair of the batch is a negative
    early_stop_metric: str = "r1_mean"
    text_lr: float | None = None      # learning rate of the text tower (a fine-tuned hf_bert wants ~1e-5)
    # Image-side hard negatives: batches made of groups of this many pairs with look-alike captions,
    # drawn from each caption's `similar_candidates` nearest (train/similar_batches.py); 0 = random batches
    similar_batches: int = 0
    similar_candidates: int = 16


@dataclass
class ContrastiveExperimentConfig:
    task: str = "contrastive"
    seed: int = 0
    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: ContrastiveTrainConfig = field(default_factory=ContrastiveTrainConfig)


class PairDataset(Dataset):
    """Every (image, caption) pair; captions stay text, the collate function tokenizes them."""

    def __init__(self, records: list[CaptionRecord], image_size: int, preload: bool = True,
                 report: SkipReport | None = None, progress: bool = True):
        self.store = ImageStore(records, image_size, preload, report, progress)
        self.records = self.store.records
        self.pairs = [(i, j) for i, rec in enumerate(self.records) for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        i, j = self.pairs[index]
        image = self.store[i]
        return None if image is None else {"image": image, "text": self.records[i].captions[j], "record": i}


class PairCollate:
    """Stack images (as `collate_captions` does) and tokenize the captions with the model's text tower;
    with a `perturb`, also one hard negative caption per pair ("negative_ids", "negative_valid")."""

    def __init__(self, tokenize: Any, perturb: CaptionPerturber | None = None):
        self.tokenize, self.perturb = tokenize, perturb

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        batch = collate_captions([None if it is None else {"image": it["image"], "record": it["record"]}
                                  for it in items])
        texts = [it["text"] for it in items if it is not None]
        if texts:
            batch["text_ids"] = self.tokenize(texts)
        if texts and self.perturb is not None:
            rng = random.Random(int(torch.randint(2**31, ())))  # torch's generator: seeded by the Trainer
            negatives = [self.perturb(t, rng) for t in texts]
            batch["negative_ids"] = self.tokenize([n or t for n, t in zip(negatives, texts, strict=True)])
            batch["negative_valid"] = torch.tensor([n is not None for n in negatives])
        return batch


def groups_with_text_lr(model: nn.Module, cfg: ContrastiveTrainConfig) -> list[dict[str, Any]]:
    """The Trainer's parameter groups, with the text tower's parameters moved to `text_lr`."""
    text_params = {id(p) for p in model.text.parameters()}
    out = []
    for group in param_groups(model, cfg):
        text = [p for p in group["params"] if id(p) in text_params]
        rest = [p for p in group["params"] if id(p) not in text_params]
        for params, lr in ((rest, group["lr"]), (text, cfg.text_lr)):
            if params:
                out.append({**group, "params": params, "lr": lr, "base_lr": lr})
    return out


def train_contrastive(cfg: ContrastiveExperimentConfig, progress: bool = True,
                      stop_at: int | None = None) -> dict[str, Any]:
    """Train a dual encoder as configured; the best model lands in `{train.out_dir}/model`."""
    report = SkipReport(source="training data")
    if cfg.data.format in STREAMS:  # shards: the vocabulary from the first captions; the images stream later
        train_records: list[CaptionRecord] = []
        captions = open_stream(cfg.data, 1).captions(cfg.data.vocab_samples)
    else:
        train_records = load_split(cfg.data, cfg.data.train_split, report)
        captions = (c for r in train_records for c in r.captions)
    tokenizer = WordTokenizer.build(captions, min_count=cfg.data.min_count, max_size=cfg.data.max_vocab)
    torch.manual_seed(cfg.seed)
    model = DualEncoder(cfg.model, tokenizer if cfg.model.text.name != "hf_bert" else None)
    return fit_dual_encoder(model, cfg, train_records, report, progress, stop_at)


def fit_dual_encoder(model: DualEncoder, cfg: ContrastiveExperimentConfig, train_records: list[CaptionRecord],
                     report: SkipReport, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Run the Trainer on `model`, then score the best model on the test split and export its image tower."""
    val_records = load_split(cfg.data, cfg.data.val_split, report)
    size = cfg.model.image_size
    streamed = cfg.data.format in STREAMS
    train_set = (open_stream(cfg.data, size, report=report, seed=cfg.seed) if streamed
                 else PairDataset(train_records, size, cfg.data.preload, report, progress))
    val_store = ImageStore(val_records, size, True, report, progress)
    if report.count:
        tqdm.write(report.summary())

    def evaluate(m: nn.Module) -> dict[str, float]:
        metrics = evaluate_retrieval(m, val_store.records, cfg.train.batch_size, progress=False, store=val_store)
        m.train()
        return metrics["strict"]

    loss = cfg.model.loss
    perturb = CaptionPerturber(loss.negative_words, loss.negative_swap) if loss.negative_words else None
    order = None
    if cfg.train.similar_batches > 0 and streamed:
        raise ConfigError(f"train.similar_batches needs the whole caption list, not the stream data.format={cfg.data.format}")
    if cfg.train.similar_batches > 0:
        order = SimilarCaptionOrder([train_set.records[i].captions[j] for i, j in train_set.pairs],
                                    [i for i, _ in train_set.pairs], cfg.train.similar_batches,
                                    cfg.train.similar_candidates)
    trainer = Trainer(model, train_set, cfg.train, collate=PairCollate(model.tokenize, perturb),
                      save_model=model.write_files, seed=cfg.seed, evaluate=evaluate,
                      run_config=dataclasses.asdict(cfg), progress=progress, epoch_order=order)
    if cfg.train.text_lr is not None:  # before any resume, so the restored optimizer has the same groups
        trainer.optimizer = torch.optim.AdamW(groups_with_text_lr(model, cfg.train), lr=cfg.train.lr)
    summary = trainer.fit(stop_at=stop_at)
    if summary.get("stopped_at") is not None:
        return summary
    best = DualEncoder.from_pretrained(Path(cfg.train.out_dir) / "model")
    test_records = load_split(cfg.data, "test", report)
    summary["test"] = evaluate_retrieval(best, test_records, cfg.train.batch_size, progress=progress)
    summary["image_encoder"] = str(best.export_image_encoder(Path(cfg.train.out_dir) / "image_encoder.safetensors"))
    if current().is_main:  # statistics of its image features: search by an unlike image says so
        summary["ood_threshold"] = save_model_stats(best.eval(), Path(cfg.train.out_dir) / "model",
                                                    [r.image for r in train_records], [r.image for r in val_records])
    summary.update(train_pairs=None if streamed else len(train_set), skipped_records=report.count,
                   parameters=sum(p.numel() for p in model.parameters()),
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    return summary


train_contrastive.config_cls = ContrastiveExperimentConfig  # type: ignore[attr-defined]
