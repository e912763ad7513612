"""Torch datasets over caption records: (image, caption) pairs for training, images for evaluation.

Images are decoded once into compact uint8 tensors when `preload` is on (small datasets), else
per item. A bad image never stops training: it is skipped, counted and reported.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tmp = tempfile.TemporaryDirectory()
    >>> Image.new("RGB", (40, 30), "red").save(f"{tmp.name}/a.png")
    >>> records = [CaptionRecord("a", f"{tmp.name}/a.png", ["a red square", "red"])]
    >>> tokenizer = WordTokenizer.build(records[0].captions)
    >>> ds = CaptionDataset(records, tokenizer, image_size=32, max_len=24, progress=False)
    >>> batch = collate_captions([ds[0], ds[1]])  # one image, two captions: two pairs
    >>> batch["images"].shape, batch["tokens"].tolist()
    (torch.Size([2, 3, 32, 32]), [[1, 5, 4, 6, 2], [1, 4, 2, 0, 0]])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..registry import DATASETS, STREAMS
from ..text.tokenizer import Tokenizer
from .images import image_to_uint8, load_image, normalize
from .records import CaptionRecord, SkipReport


class ImageStore:
    """Decodes record images to uint8 (3, S, S); optionally all at once, skipping bad files."""

    def __init__(self, records: list[CaptionRecord], image_size: int, preload: bool,
                 report: SkipReport | None = None, progress: bool = True):
        self.image_size = image_size
        self.report = report if report is not None else SkipReport(source="images")
        self.cache: dict[int, torch.Tensor] = {}
        self.records = records
        if preload:
            good = []
            for rec in tqdm(records, desc="decoding images", disable=not progress, leave=False):
                try:
                    self.cache[len(good)] = image_to_uint8(load_image(rec.image), image_size)
                    good.append(rec)
                except DataError as err:
                    self.report.skip(_reason(err), rec.image)
            self.records = good

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if index in self.cache:
            return self.cache[index]
        try:
            return image_to_uint8(load_image(self.records[index].image), self.image_size)
        except DataError as err:
            self.report.skip(_reason(err), self.records[index].image)
            return None


def _reason(err: DataError) -> str:
    text = str(err)
    return text.split(": ", 1)[1].split(";")[0] if ": " in text else text


class CaptionDataset(Dataset):
    """Every (image, reference caption) pair as one item, tokenized as <bos> words <eos>."""

    def __init__(self, records: list[CaptionRecord], tokenizer: Tokenizer, image_size: int, max_len: int,
                 preload: bool = True, report: SkipReport | None = None, progress: bool = True):
        self.store = ImageStore(records, image_size, preload, report, progress)
        self.records = self.store.records
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pairs = [(i, j) for i, rec in enumerate(self.records) for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        i, j = self.pairs[index]
        image = self.store[i]
        if image is None:
            return None
        words = self.tokenizer.encode(self.records[i].captions[j], max_len=self.max_len)
        tokens = [self.tokenizer.bos_id, *words, self.tokenizer.eos_id]
        return {"image": image, "tokens": torch.tensor(tokens, dtype=torch.long), "record": i}

    def model_inputs(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """What `Captioner.encode` takes for these records: their normalized images."""
        return {"images": normalize(torch.stack([self.store[i] for i in indices]))}


class ImageDataset(Dataset):
    """One item per record: the image and its index, for captioning and evaluation."""

    def __init__(self, records: list[CaptionRecord], image_size: int, preload: bool = False,
                 report: SkipReport | None = None, progress: bool = True):
        self.store = ImageStore(records, image_size, preload, report, progress)
        self.records = self.store.records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | None:
        image = self.store[index]
        return None if image is None else {"image": image, "record": index}


def collate_captions(items: list[dict | None], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack images (normalized float) or cached features, right-pad tokens; items that failed to load are dropped."""
    good = [it for it in items if it is not None]
    batch: dict[str, torch.Tensor] = {"skipped": torch.tensor(len(items) - len(good))}
    if not good:
        return batch
    if "image" in good[0]:
        batch["images"] = normalize(torch.stack([it["image"] for it in good]))
    if "image_features" in good[0]:  # from the feature cache (data/cache.py)
        batch["image_features"] = torch.stack([it["image_features"] for it in good])
    batch["record"] = torch.tensor([it["record"] for it in good])
    for key in ("tokens", "targets"):  # targets: a control prompt's items (data/controlled_captions.py)
        if key in good[0]:
            batch[key] = pad_sequence([it[key] for it in good], batch_first=True, padding_value=pad_id)
    return batch


def cache_root() -> Path:
    return Path(os.environ.get("POLYMODAL_CACHE", Path.home() / ".cache" / "polymodal"))


def shapes_folder(cfg: DataConfig) -> Path:
    """Where Shapes World with these parameters lives on disk (written on first use)."""
    from .shapes import write_shapes_world

    folder = Path(cfg.path) if cfg.path else cache_root() / f"shapes-n{cfg.n}-seed{cfg.seed}-px{cfg.render_size}"
    return write_shapes_world(folder, n=cfg.n, seed=cfg.seed, image_size=cfg.render_size, progress=True)


def load_split(cfg: DataConfig, split: str | None, report: SkipReport | None = None) -> list[CaptionRecord]:
    """Records of one split from the configured source; Shapes World is written to disk first."""
    from .formats import read_records

    if cfg.format == "shapes":
        return read_records("coco", shapes_folder(cfg) / "captions.json", split=split, report=report)
    if cfg.format in STREAMS:  # validation / test: a few samples of the shards, written to the cache once
        from .streams import stream_split

        if split == cfg.train_split:
            raise ConfigError(f"data.format={cfg.format} streams its training split; only the captioning and "
                              "contrastive tasks read a stream (see docs/scaling.md)")
        return stream_split(cfg, split, report, cache_root() / "streams")
    if not cfg.path:
        raise DataError(f"data.format={cfg.format}: set data.path to the annotation file")
    DATASETS.get(cfg.format)  # unknown format -> did-you-mean
    return read_records(cfg.format, cfg.path, images=cfg.images, split=split, report=report,
                        allow_outside_root=cfg.allow_outside_root)
