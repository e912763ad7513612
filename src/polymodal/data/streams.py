"""Streaming caption datasets for sets too big for memory: WebDataset tar shards and Parquet / Arrow.

The formats (stream_formats.py, registered in `registry.STREAMS`): `webdataset`, tar shards in the
OpenCLIP layout (`key.jpg` + `key.txt` and/or `key.json`), and `parquet`, Parquet files or a Hugging Face
`datasets` folder with image-bytes and caption columns.

`data.path` is a brace pattern (`shards/{000..099}.tar`, `{a,b}`), a glob or a folder; Python callers may
pass a list of paths. Every process reads only its share: the units (a tar shard; a Parquet row group or
an Arrow record batch) are dealt round-robin over `world_size` ranks x DataLoader workers, after one
seeded shuffle per epoch that every rank draws alike, so each unit is read once per epoch, by one
worker of one rank. Nothing is loaded whole: the iterator holds one sample (tar) or one row group.

A bad sample (undecodable image, no image, missing or empty caption, bad JSON) is skipped and counted
in the `SkipReport`, and yields `None`, which `collate_captions` counts as the batch's "skipped". A
whole shard that is missing, not a tar/Parquet file or truncated raises one-line `DataError` naming
the file: a broken file means a broken copy, which a long run should not silently train without.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from ..text.tokenizer import Tokenizer
from .images import image_to_uint8, load_image
from .records import CaptionRecord, SkipReport

Sample = tuple[str, Any, list[str], str | None]  # (where, encoded image, captions, problem or None)
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHOICE = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand `{000..003}` ranges (zero-padded like the first bound) and `{a,b}` choices, left to right.

    Example:
        >>> expand_braces("shards/{00..02}.tar")
        ['shards/00.tar', 'shards/01.tar', 'shards/02.tar']
        >>> expand_braces("{a,b}-{1..2}")
        ['a-1', 'a-2', 'b-1', 'b-2']
    """
    found = [m for m in (_RANGE.search(pattern), _CHOICE.search(pattern)) if m]
    if not found:
        return [pattern]
    m = min(found, key=lambda m: m.start())
    if m.re is _RANGE:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        options = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        options = m.group(1).split(",")
    return [out for o in options for out in expand_braces(pattern[:m.start()] + o + pattern[m.end():])]


def shard_paths(path: str | Path | Sequence[str | Path], suffixes: tuple[str, ...]) -> list[Path]:
    """The files `path` names (a list, brace pattern, glob or folder), each checked to exist."""
    if isinstance(path, (list, tuple)):
        names = [str(p) for p in path]
    else:
        names = expand_braces(str(path))
    files: list[Path] = []
    for name in names:
        if Path(name).is_dir():
            files += sorted(p for p in Path(name).rglob("*") if p.suffix in suffixes)
        elif glob.has_magic(name):
            files += sorted(Path(p) for p in glob.glob(name))
        elif not Path(name).is_file():
            raise DataError(f"{name}: no such shard; check data.path ({path})")
        else:
            files.append(Path(name))
    if not files:
        raise DataError(f"{path}: names no {'/'.join(suffixes)} files; check data.path")
    return files


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values (tests simulate ranks), else the torchrun process group's, else one process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CaptionStream(IterableDataset):
    """Base of the streaming readers: sharding, decoding, skip-and-count, the items the loops consume.

    Items are `CaptionDataset`'s and `PairDataset`'s: {"image": uint8 (3, S, S), "text", "record"} and,
    with a `tokenizer`, "tokens" (<bos> words <eos>); one item per (image, caption) pair. "record" is
    unique per image within a pass (unit index * 2**32 + position), so pairs of one image are not
    taken for negatives of each other. Subclasses define `units()` and `samples(unit)`.
    """

    suffixes: tuple[str, ...] = ()

    def __init__(self, path: str | Path | Sequence[str | Path], image_size: int, tokenizer: Tokenizer | None = None,
                 max_len: int = 24, rank: int | None = None, world_size: int | None = None, seed: int = 0,
                 shuffle: bool = True, report: SkipReport | None = None):
        self.path, self.files = path, shard_paths(path, self.suffixes)
        self.image_size, self.tokenizer, self.max_len = image_size, tokenizer, max_len
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.report = report if report is not None else SkipReport(source=str(path))
        units = len(self.units())
        if units < self.world_size:  # every rank finds this alike, so none is left waiting in an all-reduce
            raise DataError(f"{path}: {units} shards (or row groups) for {self.world_size} ranks; "
                            "each rank needs at least one: write more, smaller shards")

    @classmethod
    def config_kwargs(cls, cfg: Any, split: str | None) -> dict[str, Any]:
        """The format's own constructor arguments, from a DataConfig (and the split wanted)."""
        return {}

    def units(self) -> list[Any]:
        return list(self.files)

    def samples(self, unit: Any) -> Iterator[Sample]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the units for `epoch` (every rank draws the same order, then takes its share)."""
        self.epoch = epoch

    def my_units(self) -> list[tuple[int, Any]]:
        """(index, unit) pairs this rank's this DataLoader worker reads this epoch."""
        units = list(enumerate(self.units()))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            units = [units[i] for i in torch.randperm(len(units), generator=g).tolist()]
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return units[self.rank * workers + worker::self.world_size * workers]

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        for index, unit in self.my_units():
            for position, (where, data, captions, problem) in enumerate(self.samples(unit)):
                image = self._decode(where, data, problem)
                if image is None:
                    yield None
                    continue
                for caption in captions:
                    yield self._item(image, caption, index * 2**32 + position)

    def _decode(self, where: str, data: Any, problem: str | None) -> torch.Tensor | None:
        if problem is None:
            try:
                return image_to_uint8(load_image(data, name=where), self.image_size)
            except DataError as err:
                problem = str(err).split(": ", 1)[-1].split(";")[0]
        self.report.skip(problem, where)
        return None

    def _item(self, image: torch.Tensor, caption: str, record: int) -> dict[str, Any]:
        item = {"image": image, "text": caption, "record": record}
        if self.tokenizer is not None:
            words = self.tokenizer.encode(caption, max_len=self.max_len)
            item["tokens"] = torch.tensor([self.tokenizer.bos_id, *words, self.tokenizer.eos_id], dtype=torch.long)
        return item

    def captions(self, limit: int = 0) -> Iterator[str]:
        """The captions of the first `limit` good-looking samples of all units (0: all), images not decoded:
        what a word vocabulary is built from. The same on every rank."""
        count = 0
        for unit in self.units():
            for _, _, captions, problem in self.samples(unit):
                if problem is None:
                    yield from captions
                    count += 1
                    if count == limit:
                        return

    def materialize(self, limit: int, folder: Path) -> list[CaptionRecord]:
        """The first `limit` samples as image files under `folder` + records (validation and test sets)."""
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for unit in self.units():
            for where, data, captions, problem in self.samples(unit):
                if problem is None:
                    try:
                        load_image(data, name=where)
                    except DataError as err:
                        problem = str(err).split(": ", 1)[-1].split(";")[0]
                if problem is not None:
                    self.report.skip(problem, where)
                    continue
                image = folder / f"{len(records):06d}.img"  # load_image reads the format from the bytes
                _write_atomic(image, data)
                records.append(CaptionRecord(id=where, image=str(image), captions=captions))
                if len(records) == limit:
                    return records
        return records


def open_stream(cfg: Any, image_size: int, tokenizer: Tokenizer | None = None, split: str | None = None,
                report: SkipReport | None = None, seed: int = 0, path: Any = None) -> CaptionStream:
    """The stream `cfg` (a DataConfig with a streaming format) names, sharded for this torchrun rank."""
    from ..registry import STREAMS

    cls = STREAMS.get(cfg.format)
    if not (path or cfg.path):
        raise DataError(f"data.format={cfg.format}: set data.path to the shards (a brace pattern, glob or folder)")
    return cls(path or cfg.path, image_size, tokenizer=tokenizer, max_len=cfg.max_len, seed=seed,
               report=report, **cls.config_kwargs(cfg, split))


def stream_split(cfg: Any, split: str | None, report: SkipReport | None, folder: Path) -> list[CaptionRecord]:
    """Records of the first `data.val_samples` samples of `data.val_path` (default: of `data.path`, an
    in-sample check), with their images written once under `folder`: the validation and test sets."""
    path = cfg.val_path or cfg.path
    stream = open_stream(cfg, 1, split=split, report=report, path=path)
    key = hashlib.sha1(json.dumps([str(p) for p in stream.files] + [cfg.val_samples, split]).encode()).hexdigest()
    done = folder / key[:16] / "records.json"
    if done.is_file():  # written before (by rank 0, or by an earlier run)
        return [CaptionRecord(**r) for r in json.loads(done.read_text(encoding="utf-8"))]
    records = stream.materialize(cfg.val_samples, done.parent)
    _write_atomic(done, json.dumps([vars(r) for r in records]).encode())
    return records


def _write_atomic(path: Path, data: bytes) -> None:
    """Other ranks may be reading `path` (or writing the same bytes): they see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
