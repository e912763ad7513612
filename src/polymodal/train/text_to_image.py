"""The text -> image task: captioned images (the same `data.*` keys as captioning) -> TextToImage -> Trainer.

Every (image, reference caption) pair is one training item; images are scaled to [-1, 1], never flipped
(a flip would turn "left of" into a lie). Validation is the flow-matching loss at fixed noise and times,
so it is comparable between evaluations; with `ema_decay` > 0 the moving average of the weights is what is
validated and saved (the trained weights themselves stay in the checkpoint for resuming).

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config("configs/text_to_image_flow.yaml", ["train.steps=20", "train.out_dir=runs/t2i"])
    >>> cfg.model.image_size, task.__name__
    (64, 'train_text_to_image')
    >>> summary = task(cfg)  # trains; the model lands in runs/t2i/model  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import atomic_directory
from ..config import DataConfig, TrainConfig
from ..data.datasets import CaptionDataset, load_split
from ..data.records import SkipReport
from ..errors import ConfigError
from ..models.text_to_image import TextToImage, TextToImageConfig
from ..registry import STREAMS
from ..text.tokenizer import WordTokenizer
from .distributed import main_process_first
from .trainer import Trainer


@dataclass
class TextToImageExperimentConfig:
    task: str = "text_to_image"
    seed: int = 0
    model: TextToImageConfig = field(default_factory=TextToImageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/text_to_image", lr=1e-3,
                                                                   grad_clip=1.0, early_stop_metric="val_loss"))
    val_images: int = 256        # validation pairs scored at each evaluation
    ema_decay: float = 0.995     # exponential moving average of the weights, saved and evaluated; 0 = off


class WeightAverage:
    """An EMA copy of a model, updated after every optimizer step (Polyak averaging, as diffusion models do).

    On a resumed run the average restarts from the resumed weights (it is not part of the trainer checkpoint).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> ema = WeightAverage(net, decay=0.5)
        >>> ema.update()  # the first update takes the weights as they are
        >>> _ = net.weight.data.add_(2.0); ema.update()
        >>> torch.allclose(ema.model.weight, net.weight - 1.0)
        True
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.source, self.decay = model, decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.fresh = True  # the first update copies: the source may have been resumed since the copy

    @torch.no_grad()
    def update(self, *_: Any) -> None:
        for avg, cur in zip(self.model.state_dict().values(), self.source.state_dict().values(), strict=True):
            if self.fresh:
                avg.copy_(cur)
            elif avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - self.decay)
            else:
                avg.copy_(cur)
        self.fresh = False


class AveragedTrainer(Trainer):
    """The Trainer, saving `kept` (the weight average) as the best model; checkpoints keep the trained weights."""

    kept: torch.nn.Module | None = None

    def save_best(self) -> None:
        if self.kept is None or not self.env.is_main:
            return super().save_best()
        with atomic_directory(self.out / "model") as tmp:
            self.kept.write_files(tmp)  # type: ignore[operator]


def collate_pixels(items: list[dict | None], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack uint8 images into pixels in [-1, 1] and right-pad caption tokens; failed items are dropped.

    Example:
        >>> item = {"image": torch.full((3, 4, 4), 255, dtype=torch.uint8), "tokens": torch.tensor([1, 5, 2])}
        >>> batch = collate_pixels([item, None])
        >>> batch["pixels"].max().item(), batch["tokens"].tolist(), batch["skipped"].item()
        (1.0, [[1, 5, 2]], 1)
    """
    good = [it for it in items if it is not None]
    batch: dict[str, torch.Tensor] = {"skipped": torch.tensor(len(items) - len(good))}
    if not good:
        return batch
    batch["pixels"] = torch.stack([it["image"] for it in good]).float() / 127.5 - 1.0
    batch["tokens"] = pad_sequence([it["tokens"] for it in good], batch_first=True, padding_value=pad_id)
    return batch


@torch.no_grad()
def flow_validation(model: TextToImage, dataset: CaptionDataset, n_pairs: int, batch_size: int = 64,
                    seed: int = 0) -> dict[str, float]:
    """The flow-matching loss on the first `n_pairs` validation pairs, at noise and times fixed by `seed`."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(torch.utils.data.Subset(dataset, range(min(n_pairs, len(dataset)))), batch_size=batch_size,
                        collate_fn=lambda items: collate_pixels(items, model.tokenizer.pad_id))
    total, count = 0.0, 0
    for batch in loader:
        if "pixels" not in batch:
            continue
        x1 = batch["pixels"].to(model.device)
        x0 = torch.randn(x1.shape, generator=g).to(model.device)
        t = torch.sigmoid(torch.randn(x1.shape[0], generator=g)).to(model.device)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
        context, mask, pooled = model.encode_text(batch["tokens"].to(model.device))
        v = model.unet(xt, t, context, mask, pooled)
        total += float(((v - (x1 - x0)) ** 2).mean()) * x1.shape[0]
        count += x1.shape[0]
    model.train()
    return {"loss": total / max(count, 1)}


def train_text_to_image(cfg: TextToImageExperimentConfig, progress: bool = True,
                        stop_at: int | None = None) -> dict[str, Any]:
    """Train a text-to-image generator as configured; the best model lands in `{train.out_dir}/model`."""
    if cfg.data.format in STREAMS:
        raise ConfigError(f"text_to_image: data.format={cfg.data.format} is a stream; give an indexed dataset "
                          "(shapes, coco, karpathy, jsonl, csv)")
    report = SkipReport(source="training data")
    with main_process_first():
        train_records = load_split(cfg.data, cfg.data.train_split, report)
        val_records = load_split(cfg.data, cfg.data.val_split, report)
    tokenizer = WordTokenizer.build((c for r in train_records for c in r.captions), min_count=cfg.data.min_count,
                                    max_size=cfg.data.max_vocab)
    torch.manual_seed(cfg.seed)
    model = TextToImage(cfg.model, tokenizer)
    size, max_len = cfg.model.image_size, min(cfg.data.max_len, cfg.model.text.max_len - 2)
    train_set = CaptionDataset(train_records, tokenizer, size, max_len, cfg.data.preload, report, progress)
    val_set = CaptionDataset(val_records[: cfg.val_images], tokenizer, size, max_len, True, report, progress)
    if report.count:
        tqdm.write(report.summary())

    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    kept = ema.model if ema is not None else model  # what is evaluated and saved

    def evaluate(m: TextToImage) -> dict[str, float]:
        return flow_validation(kept, val_set, cfg.val_images, cfg.train.batch_size, cfg.seed)

    trainer = AveragedTrainer(model, train_set, cfg.train, collate=lambda items: collate_pixels(items, tokenizer.pad_id),
                              save_model=model.write_files, seed=cfg.seed, evaluate=evaluate,
                              run_config=dataclasses.asdict(cfg), progress=progress)
    trainer.kept = kept
    if ema is not None:
        ema.model.to(trainer.device)
        trainer.optimizer.register_step_post_hook(ema.update)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(vocab_size=len(tokenizer), train_pairs=len(train_set), skipped_records=report.count,
                   parameters=sum(p.numel() for p in model.parameters()))
    return summary


train_text_to_image.config_cls = TextToImageExperimentConfig  # type: ignore[attr-defined]
