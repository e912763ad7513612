"""Cross-modal retrieval with a dual encoder: embedding indexes and search (scoring: `eval/retrieval_scores.py`).

An index is a folder of two files, no pickle: `embeddings.safetensors` (N, E) unit vectors and
`index.json` (what each row is: image paths or caption texts, and the fingerprint of the model that
made them). Queries embedded by another model live in another space, so an index refuses them.

Example:
    With an untrained tiny dual encoder (a trained one: `polymodal.load("runs/contrastive/model")`):

    >>> import tempfile
    >>> from PIL import Image
    >>> from polymodal.config import EncoderConfig
    >>> from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32)
    >>> model = DualEncoder(cfg, WordTokenizer.build(["a red circle"]))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> Path(tmp.name, "photos").mkdir()
    >>> for name, colour in [("a.png", "red"), ("b.png", "blue")]:
    ...     Image.new("RGB", (32, 32), colour).save(f"{tmp.name}/photos/{name}")
    >>> _ = Path(tmp.name, "photos/c.png").write_text("not an image")
    >>> index, skipped = build_image_index(model, f"{tmp.name}/photos", progress=False)
    >>> len(index.items), skipped.count  # c.png could not be read
    (2, 1)
    >>> _ = index.save(f"{tmp.name}/photos.index")
    >>> hits = RetrievalIndex.load(f"{tmp.name}/photos.index").search(model.embed_texts("a red circle"), k=3)
    >>> sorted(Path(path).name for path, score in hits[0])  # (path, cosine) best first; untrained: any order
    ['a.png', 'b.png']
    >>> tmp.cleanup()

    Search itself is a dot product of unit vectors:

    >>> index = RetrievalIndex(torch.eye(3), ["a.png", "b.png", "c.png"], "image", fingerprint="demo")
    >>> [(path, round(score, 2)) for path, score in index.search(torch.tensor([0.6, 0.8, 0.0]), k=2)[0]]
    [('b.png', 0.8), ('a.png', 0.6)]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import atomic_directory, read_safetensors, save_tensors
from ..data.images import image_to_tensor
from ..data.records import CaptionRecord, SkipReport
from ..errors import DataError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EMBEDDINGS_FILE, INDEX_FILE, IMAGES_DIR = "embeddings.safetensors", "index.json", "images"
INDEX_VERSION = 1


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the architecture, the vocabulary and every weight: equal iff the embeddings would be.

    Computed from the model in memory (not its files), so a model saved and loaded again keeps its
    fingerprint, while any retraining or a different tokenizer changes it.
    """
    h = hashlib.sha256(str(getattr(model, "architecture", type(model).__name__)).encode())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        h.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class RetrievalIndex:
    """Unit embeddings (N, E) of N items of one kind ("image" paths or "text" captions)."""

    embeddings: torch.Tensor
    items: list[str]
    kind: str
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, copy_images: bool = False) -> Path:
        """Write the index folder atomically (embeddings.safetensors + index.json).

        With `copy_images`, the indexed images are copied into PATH/images/ and every path in the index
        (the images, the model that built it) is stored relative to the folder, so the folder can be
        moved or shipped as it is: the bundled search index is made this way.
        """
        items, info = self.items, dict(self.info)
        with atomic_directory(path) as tmp:
            if copy_images:
                if self.kind != "image":
                    raise InputError(f"--copy-images needs an index of images, not {self.kind}s")
                items = _copy_images(self.items, tmp, info.get("root"))
                model = dict(info.get("model", {}))
                if model.get("dir"):
                    model["dir"] = os.path.relpath(Path(model["dir"]).resolve(), Path(path).resolve())
                info.update(model=model, root=IMAGES_DIR, relative_to_index=True)
            save_tensors(tmp / EMBEDDINGS_FILE, {"embeddings": self.embeddings.float()})
            meta = {"version": INDEX_VERSION, "kind": self.kind, "items": items,
                    "model": {"fingerprint": self.fingerprint, **info.get("model", {})},
                    **{k: v for k, v in info.items() if k != "model"}}
            (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        path = Path(path)
        if not (path / INDEX_FILE).is_file():
            raise InputError(f"{path}: not a retrieval index (no {INDEX_FILE}); build one with `polymodal index`")
        try:
            meta = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
            items, kind, fingerprint = list(meta["items"]), meta["kind"], meta["model"]["fingerprint"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{path / INDEX_FILE}: corrupt index ({type(err).__name__}: {err}); rebuild it") from None
        embeddings = read_safetensors(path / EMBEDDINGS_FILE).get("embeddings")
        if embeddings is None or embeddings.shape[0] != len(items):
            raise InputError(f"{path}: embeddings and {INDEX_FILE} disagree on the number of items; rebuild it")
        info = {k: v for k, v in meta.items() if k not in ("items", "kind")}
        if info.get("relative_to_index"):  # a self-contained folder (save(copy_images=True)): paths are inside it
            items = [str(path / item) for item in items]
            if info["model"].get("dir"):
                info["model"] = {**info["model"], "dir": str((path / info["model"]["dir"]).resolve())}
        return cls(embeddings, items, kind, fingerprint, info)

    def check_model(self, model: nn.Module, where: str = "index") -> None:
        """Refuse a model other than the one that built the index (its embeddings live in another space)."""
        theirs = model_fingerprint(model)
        if theirs != self.fingerprint:
            built = self.info.get("model", {}).get("dir") or "another model"
            raise InputError(f"{where}: built with {built} (fingerprint {self.fingerprint[:12]}), but the query "
                             f"model has fingerprint {theirs[:12]}; query with the model that built the index "
                             f"or rebuild the index with this model")

    def search(self, queries: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Brute-force cosine search: for each query row (Q, E), the k best items with their scores."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        if queries.ndim == 1:
            queries = queries[None]
        if queries.shape[-1] != self.embeddings.shape[-1]:
            raise InputError(f"query width {queries.shape[-1]} != index width {self.embeddings.shape[-1]}")
        top = (queries.float() @ self.embeddings.T).topk(min(k, len(self.items)), dim=-1)
        return [[(self.items[int(i)], float(s)) for s, i in zip(ss, ii, strict=True)]
                for ss, ii in zip(top.values, top.indices, strict=True)]


def _copy_images(paths: Sequence[str], folder: Path, root: str | None) -> list[str]:
    """Copy images into folder/images/, keeping their paths under `root` (the folder that was indexed);
    returns those paths relative to `folder`."""
    base = Path(root) if root else Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    out = []
    for p in paths:
        source = Path(p).resolve()
        name = Path(IMAGES_DIR) / source.relative_to(base.resolve())
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / name)
        out.append(name.as_posix())
    return out


# ----------------------------------------------------------------------------- building indexes
def find_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder` (recursively, by extension), in sorted order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@torch.inference_mode()
def embed_image_files(model: nn.Module, paths: Sequence[str | Path], batch_size: int = 128,
                      progress: bool = True,
                      feature_cache: str | Path | None = None) -> tuple[torch.Tensor, list[str], SkipReport]:
    """Embed image files in batches; unreadable ones are skipped and counted in the returned report.

    With `feature_cache` (a cache folder, data/cache.py) the image encoder's features are cached there, so
    indexing the same images again with a model that shares the (frozen) image encoder skips the encoder.
    """
    report = SkipReport(source="images")
    model.eval()
    if feature_cache is not None:
        return _embed_cached(model, paths, batch_size, progress, Path(feature_cache), report)
    chunks, kept = [], []
    bar = tqdm(total=len(paths), desc="embedding images", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        tensors = []
        for p in paths[start:start + batch_size]:
            try:
                tensors.append(image_to_tensor(p, model.cfg.image_size))
                kept.append(str(p))
            except DataError as err:
                report.skip(str(err).split(": ", 1)[-1].split(";")[0], str(p))
        if tensors:
            chunks.append(model.encode_image(torch.stack(tensors).to(model.device)).float().cpu())
        bar.update(len(paths[start:start + batch_size]))
    bar.close()
    return (torch.cat(chunks) if chunks else torch.zeros(0, model.cfg.embed_dim)), kept, report


@torch.inference_mode()
def _embed_cached(model: nn.Module, paths: Sequence[str | Path], batch_size: int, progress: bool, root: Path,
                  report: SkipReport) -> tuple[torch.Tensor, list[str], SkipReport]:
    from ..data.cache import feature_cache

    records = [CaptionRecord(str(p), str(p), []) for p in paths]
    cache = feature_cache(model.encoder, records, model.cfg.image_size, root, batch_size, progress=progress,
                          report=report)
    chunks = [model.encode_image_features(cache.batch(list(range(i, min(i + batch_size, len(cache)))))
                                          .to(model.device)).float().cpu()
              for i in range(0, len(cache), batch_size)]
    return torch.cat(chunks), [r.image for r in cache.records], report


def _model_info(model: nn.Module, model_dir: str | Path | None) -> dict[str, Any]:
    return {"architecture": getattr(model, "architecture", type(model).__name__),
            **({"dir": str(Path(model_dir).resolve())} if model_dir is not None else {})}


def build_image_index(model: nn.Module, folder: str | Path, batch_size: int = 128, progress: bool = True,
                      model_dir: str | Path | None = None,
                      feature_cache: str | Path | None = None) -> tuple[RetrievalIndex, SkipReport]:
    """Embed every image under `folder` (encoder features cached under `feature_cache` if given)."""
    paths = find_images(folder)
    if not paths:
        raise InputError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    emb, kept, report = embed_image_files(model, paths, batch_size, progress, feature_cache)
    if not kept:
        raise InputError(f"{folder}: none of the {len(paths)} images could be read; {report.summary()}")
    info = {"model": _model_info(model, model_dir), "root": str(Path(folder).resolve()), "skipped": report.count}
    return RetrievalIndex(emb, kept, "image", model_fingerprint(model), info), report


def read_caption_file(path: str | Path) -> list[str]:
    """Captions from a .txt file (one a line), a JSON list of strings, or a COCO captions JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: captions file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        captions = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            data = [a.get("caption") for a in data["annotations"] if isinstance(a, dict)]
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise InputError(f"{path}: expected a JSON list of caption strings or a COCO captions file")
        captions = [c.strip() for c in data if c.strip()]
    captions = list(dict.fromkeys(captions))  # one row per distinct caption
    if not captions:
        raise InputError(f"{path}: no captions in it")
    return captions


def build_text_index(model: nn.Module, captions: list[str], model_dir: str | Path | None = None,
                     source: str | None = None) -> RetrievalIndex:
    """Embed captions into an index that images (or texts) can query."""
    info = {"model": _model_info(model, model_dir), **({"source": source} if source else {})}
    return RetrievalIndex(model.embed_texts(captions), list(captions), "text", model_fingerprint(model), info)
