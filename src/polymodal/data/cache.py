"""Encoder feature cache: a frozen encoder's features for a dataset, computed once, memory-mapped after.

A frozen encoder gives the same features for an image every epoch, so re-encoding is wasted work:
the cache runs it once over every image (batched, decoding in DataLoader workers, tqdm bar) and
keeps the (images, regions, channels) float32 features in a `.npy` file that later runs map into
memory (`numpy.load(mmap_mode="r")`, never pickle) next to a JSON manifest.

The cache is keyed by everything the features depend on: the encoder's config and class, a sha256
of its weights and buffers, the image size and normalization, and each image's path, byte size and
mtime. Any change gives another key, hence a miss and a rebuild, and the rebuild deletes the stale
cache of the same images and encoder (its "slot"). Training (`data.feature_cache: true`),
evaluation and indexing all go through `feature_cache()`.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from polymodal.config import EncoderConfig
    >>> from polymodal.nn.encoders import build_encoder
    >>> tmp = tempfile.TemporaryDirectory()
    >>> Image.new("RGB", (40, 40), "red").save(f"{tmp.name}/a.png")
    >>> records = [CaptionRecord("a", f"{tmp.name}/a.png", ["a red square"])]
    >>> encoder = build_encoder(EncoderConfig(name="small_cnn", width=8))
    >>> cache = feature_cache(encoder, records, image_size=32, root=tmp.name, progress=False)
    >>> cache = feature_cache(encoder, records, image_size=32, root=tmp.name, progress=False)
    >>> cache.hit, cache.features.shape  # second call: memory-mapped, no image decoded
    (True, (1, 16, 32))
    >>> tmp.cleanup()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import atomic_directory
from ..errors import DataError
from ..text.tokenizer import Tokenizer
from .datasets import ImageDataset, cache_root, collate_captions
from .images import IMAGENET_MEAN, IMAGENET_STD
from .records import CaptionRecord, SkipReport

CACHE_VERSION = 1
FEATURES_FILE, MANIFEST_FILE = "features.npy", "manifest.json"


def weights_hash(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes) of `module`."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def image_stamps(records: list[CaptionRecord]) -> list[tuple[str, int, int]]:
    """(absolute path, byte size, mtime in ns) of each record's image; (-1, -1) when it is missing."""
    stamps = []
    for rec in records:
        path = os.path.abspath(rec.image)
        try:
            st = os.stat(path)
            stamps.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((path, -1, -1))
    return stamps


def cache_key(encoder: nn.Module, image_size: int, records: list[CaptionRecord]) -> tuple[str, str, dict[str, Any]]:
    """(key, slot, components): the key changes with anything the features depend on; the slot names
    the (encoder kind, image size, image list) that a key belongs to, so a rebuild can drop stale keys."""
    stamps = image_stamps(records)
    cfg = getattr(encoder, "cfg", None)
    components = {
        "version": CACHE_VERSION,
        "encoder_class": type(encoder).__name__,
        "encoder_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "weights_sha256": weights_hash(encoder),
        "image_size": image_size,
        "normalize": [IMAGENET_MEAN, IMAGENET_STD],
        "images_sha256": hashlib.sha256(json.dumps(stamps).encode()).hexdigest(),
        "images": len(stamps),
    }
    key = hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()
    slot_parts = [type(encoder).__name__, image_size, [s[0] for s in stamps]]
    slot = hashlib.sha256(json.dumps(slot_parts).encode()).hexdigest()
    return key, slot, components


@dataclass
class FeatureCache:
    """Memory-mapped features of `records` (row `rows[i]` belongs to `records[i]`); `hit` = reused."""

    folder: Path
    features: np.ndarray      # (images, regions, channels) float32, read-only memmap
    records: list[CaptionRecord]
    rows: list[int]
    key: str
    hit: bool

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Features (regions, channels) of `records[index]`, copied out of the map."""
        return torch.from_numpy(np.array(self.features[self.rows[index]]))

    def batch(self, indices: list[int]) -> torch.Tensor:
        """Features (B, regions, channels) of several records at once."""
        return torch.from_numpy(np.stack([self.features[self.rows[i]] for i in indices]))


def _load(folder: Path, key: str, records: list[CaptionRecord]) -> FeatureCache | None:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest.get("key") != key:
            return None
        features = np.load(folder / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # missing or unreadable: rebuild
    if list(features.shape) != manifest["shape"]:
        return None
    present = manifest["present"]
    return FeatureCache(folder, features, [records[i] for i in present], present, key, hit=True)


@torch.inference_mode()
def _build(folder: Path, key: str, components: dict[str, Any], encoder: nn.Module, records: list[CaptionRecord],
           image_size: int, batch_size: int, num_workers: int, progress: bool, report: SkipReport) -> None:
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()  # a frozen encoder runs in eval mode in training too (ImageEncoder.train)
    dataset = ImageDataset(records, image_size, preload=False, report=report, progress=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_captions,
                        num_workers=num_workers)
    present: list[int] = []
    features = None
    with atomic_directory(folder) as tmp:
        bar = tqdm(total=len(records), desc="caching features", disable=not progress, leave=False)
        for batch in loader:
            bar.update(int(batch["skipped"]) + (len(batch["record"]) if "record" in batch else 0))
            if "images" not in batch:
                continue
            out = encoder(batch["images"].to(device)).float().cpu().numpy()  # (B, regions, channels)
            if features is None:
                features = np.lib.format.open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=np.float32,
                                                     shape=(len(records), *out.shape[1:]))
            rows = batch["record"].tolist()
            features[rows] = out
            present.extend(rows)
        bar.close()
        if features is None:
            raise DataError(f"feature cache: none of the {len(records)} images could be decoded; {report.summary()}")
        features.flush()
        shape = list(features.shape)
        del features
        if num_workers:  # the workers' own skip reports stay in the workers: count the misses here
            for i in sorted(set(range(len(records))) - set(present)):
                report.skip("image could not be decoded", records[i].image)
        manifest = {"key": key, "components": components, "shape": shape, "dtype": "float32",
                    "present": sorted(present), "images": [r.image for r in records]}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    encoder.train(was_training)


def feature_cache(encoder: nn.Module, records: list[CaptionRecord], image_size: int, root: str | Path | None = None,
                  batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                  report: SkipReport | None = None) -> FeatureCache:
    """The cached features of `records` under `encoder`: reused when the key matches, else built.

    Args:
        encoder: the (frozen) image encoder; images (B, 3, S, S) -> features (B, regions, channels).
        records: the images to encode; images that fail to decode are skipped and counted in `report`.
        image_size: the side images are resized and centre-cropped to, as in training.
        root: folder holding the caches (default: `$POLYMODAL_CACHE/features`).
        batch_size: images per encoder call while building.
        num_workers: DataLoader processes decoding images while the encoder runs.
        progress: show a tqdm bar while building.
        report: collects skipped images.

    Returns:
        A FeatureCache whose `records` are the images that decoded, in the given order.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from polymodal.config import EncoderConfig
        >>> from polymodal.nn.encoders import build_encoder
        >>> tmp = tempfile.TemporaryDirectory()
        >>> Image.new("RGB", (40, 40), "red").save(f"{tmp.name}/a.png")
        >>> records = [CaptionRecord("a", f"{tmp.name}/a.png", ["a red square"])]
        >>> encoder = build_encoder(EncoderConfig(name="small_cnn", width=8))
        >>> cache = feature_cache(encoder, records, 32, root=f"{tmp.name}/feats", progress=False)
        >>> cache.hit, cache[0].shape  # built now: 16 regions of 32 channels
        (False, torch.Size([16, 32]))
        >>> tmp.cleanup()
    """
    root = Path(root) if root is not None else cache_root() / "features"
    key, slot, components = cache_key(encoder, image_size, records)
    folder = root / f"{slot[:12]}-{key[:20]}"
    cached = _load(folder, key, records)
    if cached is not None:
        return cached
    for stale in root.glob(f"{slot[:12]}-*"):  # same images and encoder kind, another key: invalid now
        if stale != folder and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    report = report if report is not None else SkipReport(source="feature cache")
    _build(folder, key, components, encoder, records, image_size, batch_size, num_workers, progress, report)
    built = _load(folder, key, records)
    assert built is not None, folder  # written just above
    built.hit = False
    return built


class CachedCaptionDataset(Dataset):
    """CaptionDataset's (image, caption) pairs with cached features in place of images.

    Items are {"image_features": (regions, channels), "tokens", "record"}; `Captioner.forward` uses the
    features instead of running its encoder. Pairs come in the same order as CaptionDataset's, so a
    seeded run sees the same batches either way.
    """

    def __init__(self, cache: FeatureCache, tokenizer: Tokenizer, max_len: int):
        self.cache, self.tokenizer, self.max_len = cache, tokenizer, max_len
        self.records = cache.records
        self.pairs = [(i, j) for i, rec in enumerate(self.records) for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, j = self.pairs[index]
        words = self.tokenizer.encode(self.records[i].captions[j], max_len=self.max_len)
        tokens = [self.tokenizer.bos_id, *words, self.tokenizer.eos_id]
        return {"image_features": self.cache[i], "tokens": torch.tensor(tokens, dtype=torch.long), "record": i}

    def model_inputs(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """What `Captioner.encode` takes for these records: their cached features."""
        return {"image_features": self.cache.batch(indices)}
