"""DistributedDataParallel plumbing, kept out of the Trainer: process group, sampler, reductions.

`torchrun --nproc_per_node=N -m polymodal train CONFIG` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `session()` (entered by the CLI) joins them into one
process group: NCCL when CUDA is available, gloo on CPU. Without those variables everything here
is a no-op for a single process, so the Trainer reads the same either way.

Batches: with N processes, `train.batch_size` is the batch of each process, so the global batch is
N x batch_size. Each epoch is torch's `DistributedSampler` permutation (`set_epoch` per epoch) with
the seed the single-process `EpochBatchSampler` uses, so the global batch k of an N-process run holds
exactly the examples of batch k of one process with batch N x batch_size.

Example:
    >>> env = current()  # no torchrun here: one process
    >>> env.rank, env.world_size, env.is_main
    (0, 1, True)
    >>> all_reduce_mean({"loss": 2.0}, env)
    {'loss': 2.0}
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

SEED_STRIDE = 1_000_003  # the single-process sampler seeds epoch e with seed * SEED_STRIDE + e
EpochOrder = Callable[[torch.Generator], list[int]]  # an epoch's order of the dataset, drawn from the generator


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator an epoch's data order is drawn from: the same in every process, new every epoch."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def launched() -> bool:
    """True when started by torchrun (or anything that sets its environment variables)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> DistEnv:
    """This process's DistEnv: from the initialized process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


@contextmanager
def session(timeout_s: int = 1800) -> Iterator[DistEnv]:
    """Join the torchrun process group for the duration of the block (a no-op without torchrun).

    Example:
        >>> with session() as env:  # under torchrun: NCCL on GPU, gloo on CPU
        ...     env.world_size
        1
    """
    if not launched() or dist.is_initialized():
        yield current()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


@contextmanager
def main_process_first(env: DistEnv | None = None) -> Iterator[None]:
    """Rank 0 runs the block first (writes a dataset, builds a cache); the others then find it done."""
    env = env or current()
    if env.distributed and not env.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if env.distributed and env.is_main:
            dist.barrier()


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """DDP around `model` when there are several processes; the model itself otherwise.

    The wrapper is only for the training forward pass: save and evaluate the unwrapped model.
    DDP broadcasts rank 0's parameters and buffers at construction, so all ranks start equal.
    """
    if not env.distributed:
        return model
    device_ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


class DistributedBatchSampler(Sampler[list[int]]):
    """This rank's batches of one epoch, from torch's DistributedSampler; resumable mid-epoch.

    `drop_last=True` trims the epoch to a multiple of the world size, so every rank runs the same
    number of equally sized batches (DDP needs every rank in every all-reduce).
    """

    def __init__(self, size: int, batch_size: int, seed: int, env: DistEnv, epoch: int = 0, start: int = 0,
                 order: EpochOrder | None = None):
        self.sampler = DistributedSampler(range(size), num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                          seed=seed * SEED_STRIDE, drop_last=True)
        self.batch_size, self.seed, self.env, self.order = batch_size, seed, env, order
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Reshuffle for `epoch` and skip its first `start` batches (a resumed run)."""
        self.sampler.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler) if self.order is None else self._from_order()
        for b in range(self.start, len(self)):
            yield indices[b * self.batch_size:(b + 1) * self.batch_size]

    def _from_order(self) -> list[int]:
        """This rank's share of an epoch order (the trainer's `epoch_order`, the same on every rank): the
        r-th contiguous part of each global batch, so groups the order placed together stay together and
        the global batches are those of one process with the whole batch."""
        world, rank = self.env.world_size, self.env.rank
        order = self.order(epoch_generator(self.seed, self.epoch))[:self.sampler.num_samples * world]  # drop_last
        out: list[int] = []
        step = self.batch_size * world
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            share = len(chunk) // world
            out += chunk[rank * share:(rank + 1) * share]
        return out

    def __len__(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch_size)


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """The mean of each value over all ranks (every rank must call this at the same point)."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                          device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) / env.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def all_reduce_sum(value: int, env: DistEnv) -> int:
    """The sum of an integer count (e.g. skipped items) over all ranks."""
    if not env.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return int(tensor.item())


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """Rank 0's decision (e.g. early stopping after its evaluation), on every rank."""
    if not env.distributed:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())
