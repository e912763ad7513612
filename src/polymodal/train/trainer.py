"""One generic training loop, readable top to bottom.

AdamW, warm-up + cosine schedule, gradient clipping, optional bf16 autocast, tqdm progress,
TensorBoard + JSONL logs, periodic validation with early stopping, and exact resume (model,
optimizer, RNG, data order, step) from the last checkpoint. Under torchrun the same loop runs
DistributedDataParallel (see `distributed.py`): rank 0 alone logs, evaluates and writes checkpoints,
logged training metrics are averaged over ranks.

A model plugs in through `forward(batch) -> (output, {"loss": ..., other named terms})`, and
`save_model(folder)` writes its files into an existing folder (the trainer makes writes atomic).

Example:
    A `Captioner` on a `CaptionDataset` (what train/captioning.py does, with validation on top):

    >>> from polymodal.data.datasets import collate_captions
    >>> cfg = TrainConfig(steps=100, out_dir="runs/mine")  # the best model lands in runs/mine/model
    >>> trainer = Trainer(model, train_set, cfg, collate=collate_captions,
    ...                   save_model=model.write_files)  # doctest: +SKIP
    >>> trainer.fit()["step"]  # trains  # doctest: +SKIP
    100
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm import tqdm

from ..checkpoint import atomic_directory, load_weights, recover_directory
from ..config import TrainConfig
from ..errors import CheckpointError, DataError
from . import distributed
from .state import drop_partial_line, read_trainer_state, restore_trainer_state, write_trainer_state

LOWER_IS_BETTER = ("loss", "perplexity", "rank", "mse", "error")
INPUT_KEYS = ("images", "tokens", "mel", "speech_states", "pixels")  # a batch with none of these: every item failed to load


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch), so a resume can skip ahead exactly.

    `order` replaces the plain shuffle by one that places related items next to each other (see
    `train.similar_batches`); consecutive runs of `batch_size` items of it are the batches.
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int = 0, start: int = 0,
                 order: distributed.EpochOrder | None = None):
        self.size, self.batch_size, self.seed, self.epoch, self.start = size, batch_size, seed, epoch, start
        self.order = order

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Move to `epoch`, skipping its first `start` batches (a resumed run)."""
        self.epoch, self.start = epoch, start

    def batches(self) -> list[list[int]]:
        g = distributed.epoch_generator(self.seed, self.epoch)
        order = self.order(g) if self.order is not None else torch.randperm(self.size, generator=g).tolist()
        return [order[i:i + self.batch_size] for i in range(0, self.size, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start:]

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size) - self.start


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak: a multiplier in (0, 1]."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Decay only matrices; the encoder may get its own learning rate (0 freezes it, nanoVLM style)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoder."), p.ndim >= 2), []).append(p)
    out = []
    for (is_encoder, decay), params in sorted(groups.items()):
        lr = cfg.encoder_lr if (is_encoder and cfg.encoder_lr is not None) else cfg.lr
        out.append({"params": params, "lr": lr, "base_lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0})
    return out


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if any(k in metric for k in LOWER_IS_BETTER) else value > best


class Trainer:
    """Trains `model` on `dataset` for `cfg.steps` steps; see the module docstring."""

    def __init__(self, model: nn.Module, dataset: Dataset, cfg: TrainConfig, *, collate: Callable,
                 save_model: Callable[[Path], Any], seed: int = 0,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 run_config: dict[str, Any] | None = None, progress: bool = True,
                 epoch_order: distributed.EpochOrder | None = None):
        self.model, self.dataset, self.cfg, self.collate = model, dataset, cfg, collate
        self.epoch_order = epoch_order
        self.save_model, self.evaluate, self.seed = save_model, evaluate, seed
        self.run_config = run_config or {}
        self.progress = progress
        self.out = Path(cfg.out_dir)
        self.env = distributed.current()
        self.device = self.env.device
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            # Only the image encoder (fixed shapes: compiled once). A whole captioner recompiles for every
            # caption length: 215 s for its first step and 28x slower steps after, measured on CPU.
            getattr(self.model, "encoder", self.model).compile()
        # The training forward pass goes through DDP (several processes); saving and evaluation use the
        # plain model.
        self.forward_model = distributed.wrap_model(self.model, self.env)
        self._data: DataLoader | None = None
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
        self.step, self.epoch, self.position = 0, 0, 0
        self.best: float | None = None
        self.bad_evals = 0
        self.skipped = 0
        self._writer = None

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not self.env.is_main:
            return
        with atomic_directory(self.out / "checkpoint") as tmp:
            self.save_model(tmp)
            write_trainer_state(tmp, self.optimizer, self._progress())

    def save_best(self) -> None:
        if not self.env.is_main:
            return
        with atomic_directory(self.out / "model") as tmp:
            self.save_model(tmp)

    def _progress(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "best": self.best,
                "bad_evals": self.bad_evals, "skipped": self.skipped, "config": self.run_config}

    def maybe_resume(self) -> bool:
        folder = recover_directory(self.out / "checkpoint")  # a kill -9 mid-save may have left it moved aside
        if not (folder / "trainer_state.json").exists():
            return False
        progress, tensors = read_trainer_state(folder)
        changes = config_changes(_comparable(progress.get("config", {})), _comparable(self.run_config))
        if changes:
            raise CheckpointError(f"{folder}: checkpoint was made with a different config ({', '.join(changes[:3])}); "
                                  f"use another train.out_dir or delete {folder} to start over")
        load_weights(self.model, folder)
        restore_trainer_state(self.optimizer, progress, tensors)
        for key in ("step", "epoch", "position", "best", "bad_evals", "skipped"):
            setattr(self, key, progress[key])
        return True

    # ---- logging -----------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        record = {"step": self.step, **record}
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self._writer.add_scalar(key, value, self.step)

    # ---- the loop ----------------------------------------------------------------------------
    def _loader(self) -> Iterable[dict[str, torch.Tensor]]:
        """One DataLoader for the whole run (so workers can persist); its sampler moves to the epoch."""
        if isinstance(self.dataset, IterableDataset):
            return self._stream_loader()
        if self._data is None:
            size, batch = len(self.dataset), self.cfg.batch_size
            sampler = (distributed.DistributedBatchSampler(size, batch, self.seed, self.env, order=self.epoch_order)
                       if self.env.distributed else EpochBatchSampler(size, batch, self.seed, order=self.epoch_order))
            # A private generator: creating the iterator must not draw from the global RNG (dropout's),
            # or a resumed run, which creates one more iterator mid-epoch, would drift from a straight run.
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            workers = self.cfg.num_workers
            self._data = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate,
                                    num_workers=workers, persistent_workers=self.cfg.persistent_workers and workers > 0,
                                    pin_memory=self.device.type == "cuda", generator=generator)
        self._data.batch_sampler.set_epoch(self.epoch, self.position)
        return self._data

    def _stream_loader(self) -> Iterator[dict[str, torch.Tensor]]:
        """A streamed dataset (data/streams.py) shards itself over ranks and workers; an epoch is one pass
        over this rank's shards (ranks may wrap at different steps: steps, not epochs, keep DDP in step).
        A resumed run re-reads the epoch's first `position` batches to skip them exactly."""
        self.dataset.set_epoch(self.epoch)
        workers = self.cfg.num_workers
        if self._data is None or not self.cfg.persistent_workers:  # persistent workers keep their epoch
            self._data = DataLoader(self.dataset, batch_size=self.cfg.batch_size, collate_fn=self.collate,
                                    num_workers=workers, persistent_workers=self.cfg.persistent_workers and workers > 0,
                                    pin_memory=self.device.type == "cuda")
        batches = 0
        for batch in itertools.islice(self._data, self.position, None):
            batches += 1
            yield batch
        if not batches and not self.position:
            raise DataError(f"{getattr(self.dataset, 'path', 'stream')}: rank {self.env.rank} read no batch in a "
                            "whole epoch (fewer shards than ranks, or every sample bad); see the skip report")

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_at(self.step, self.cfg)
        self.model.train()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.cfg.channels_last and "images" in batch:
            batch["images"] = batch["images"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
            _, losses = self.forward_model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or float("inf"))
        self.optimizer.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(grad_norm)}

    def run_evaluation(self) -> bool:
        """Evaluate (rank 0), keep the best model, return True (on every rank) when early stopping says stop."""
        stop = self._evaluate_and_keep_best() if self.env.is_main else False
        return distributed.broadcast_flag(stop, self.env)

    def _evaluate_and_keep_best(self) -> bool:
        if self.evaluate is None:
            return False
        metrics = self.evaluate(self.model)
        self.log({f"val_{k}" if not k.startswith("val_") else k: v for k, v in metrics.items()})
        key = self.cfg.early_stop_metric
        value = metrics.get(key, metrics.get(key.removeprefix("val_")))
        if value is None:
            raise CheckpointError(f"train.early_stop_metric={key!r} is not computed; available: {sorted(metrics)}")
        if is_better(key, value, self.best):
            self.best, self.bad_evals = value, 0
            self.save_best()
        else:
            self.bad_evals += 1
        return bool(self.cfg.early_stop_patience) and self.bad_evals >= self.cfg.early_stop_patience

    def fit(self, resume: bool = True, stop_at: int | None = None) -> dict[str, Any]:
        """Train to `cfg.steps` (or until early stopping); `stop_at` ends early as a crash would."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.env.is_main:
            drop_partial_line(self.out / "log.jsonl")  # what a kill -9 mid-write left
        if resume and self.maybe_resume():
            tqdm.write(f"resumed from {self.out / 'checkpoint'} at step {self.step}")
        else:
            torch.manual_seed(self.seed)
        started, last = time.time(), {}
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train", disable=not (self.progress and self.env.is_main))
        stop = False
        while self.step < self.cfg.steps and not stop:
            for batch in self._loader():
                self.position += 1
                self.skipped += int(batch.pop("skipped", 0))
                if not any(k in batch for k in INPUT_KEYS):
                    continue  # every item of this batch failed to load
                last = self.train_step(batch)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if self.step % self.cfg.log_every == 0:
                    last = distributed.all_reduce_mean(last, self.env)
                    self.log({**last, "lr": self.optimizer.param_groups[0]["lr"], "epoch": self.epoch})
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    stop = self.run_evaluation()
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop or self.step >= self.cfg.steps or self.step == stop_at:
                    break
            else:
                self.epoch, self.position = self.epoch + 1, 0
            if self.step == stop_at:
                self.save_checkpoint()
                bar.close()
                return {"step": self.step, "stopped_at": stop_at}
        bar.close()
        if self.evaluate is not None and not stop and self.step % max(self.cfg.eval_every, 1):
            stop = self.run_evaluation()
        if self.evaluate is None or self.best is None:
            self.save_best()
        self.save_checkpoint()
        if self._writer is not None:
            self._writer.close()
        skipped = distributed.all_reduce_sum(self.skipped, self.env)
        summary = {"step": self.step, "seconds": round(time.time() - started, 1), "best": self.best,
                   "skipped_items": skipped, "world_size": self.env.world_size, **{f"final_{k}": v for k, v in last.items()}}
        self.log({"summary": summary})
        return summary


def config_changes(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted keys whose values differ, as "train.lr: 0.005 -> 0.001". Keys on one side only are
    fields a polymodal upgrade added or removed, not a change of the run, so they do not count.

    Example:
        >>> config_changes({"train": {"lr": 0.005, "steps": 9}}, {"train": {"lr": 0.001, "steps": 9, "new": 1}})
        ['train.lr: 0.005 -> 0.001']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in old if k in new for c in config_changes(old[k], new[k], f"{where}.{k}" if where else k)]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run config that must match for a resume (not paths, workers or logging)."""
    config = json.loads(json.dumps(config))
    for key in ("out_dir", "num_workers", "persistent_workers", "log_every"):
        config.get("train", {}).pop(key, None)
    return config

