"""Cross-modal retrieval with a dual encoder: embedding indexes, search, retrieval evaluation.

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
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import atomic_directory, read_safetensors, save_tensors
from ..data.datasets import ImageStore
from ..data.images import image_to_tensor, normalize
from ..data.records import CaptionRecord, SkipReport
from ..errors import DataError, InputError
from ..text.perturb import CaptionPerturber, fix_articles
from ..text.tokenizer import split_words
from .caption_metrics import retrieval_metrics

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
EMBEDDINGS_FILE, INDEX_FILE = "embeddings.safetensors", "index.json"
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

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically (embeddings.safetensors + index.json)."""
        with atomic_directory(path) as tmp:
            save_tensors(tmp / EMBEDDINGS_FILE, {"embeddings": self.embeddings.float()})
            meta = {"version": INDEX_VERSION, "kind": self.kind, "items": self.items,
                    "model": {"fingerprint": self.fingerprint, **self.info.get("model", {})},
                    **{k: v for k, v in self.info.items() if k != "model"}}
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


# ----------------------------------------------------------------------------- evaluation
PARAPHRASES = {  # data: Shapes World words -> words its captions never use (unseen by a word vocabulary)
    "red": "crimson", "green": "emerald", "blue": "cobalt", "yellow": "golden", "purple": "violet",
    "orange": "amber", "white": "ivory", "cyan": "turquoise", "circle": "disc", "square": "box",
    "triangle": "wedge", "diamond": "rhombus", "star": "pentagram", "hexagon": "six-sided polygon",
    "small": "tiny", "large": "big", "above": "over", "below": "beneath", "shapes": "objects",
}


def paraphrase(caption: str, table: dict[str, str] | None = None) -> str:
    """Swap every word with a synonym from `table` (default `PARAPHRASES`), articles fixed.

    Example:
        >>> paraphrase("a small red circle to the left of an orange square")
        'a tiny crimson disc to the left of an amber box'
    """
    table = PARAPHRASES if table is None else table
    return fix_articles(re.sub(r"[a-z]+", lambda m: table.get(m.group(0), m.group(0)), caption.lower()))


def shapes_relevance(records: list[CaptionRecord], shapes_dir: str | Path) -> torch.Tensor:
    """(I, T) True where caption j (of all records' captions, in order) is one that the Shapes World
    grammar can say of image i: the strictest fair notion of "this caption describes that image".

    Example:
        >>> import tempfile
        >>> from polymodal.data.formats import read_records
        >>> from polymodal.data.shapes import write_shapes_world
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=40, image_size=32, progress=False)
        >>> records = read_records("coco", folder / "captions.json", split="test")
        >>> rel = shapes_relevance(records, folder)
        >>> rel.shape, rel.sum(1).tolist()  # 4 images x 20 captions; here only its own 5 fit each image
        (torch.Size([4, 20]), [5, 5, 5, 5])
        >>> tmp.cleanup()
    """
    from ..data import shapes_text
    from ..data.shapes import Scene

    scenes = {}
    for line in (Path(shapes_dir) / "scenes.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            scenes[str(entry["image_id"])] = Scene.from_dict(entry)
    missing = [r.id for r in records if r.id not in scenes]
    if missing:
        raise DataError(f"{shapes_dir}: no scene for image id {missing[0]}; is it the Shapes World of these records?")

    def norm(text: str) -> str:
        return " ".join(split_words(text))

    sayable = [{norm(c) for c in [shapes_text.canonical(scenes[r.id]), *shapes_text.variants(scenes[r.id])]}
               for r in records]
    texts = [norm(c) for r in records for c in r.captions]
    return torch.tensor([[t in can for t in texts] for can in sayable], dtype=torch.bool)


@torch.inference_mode()
def evaluate_retrieval(model: nn.Module, records: list[CaptionRecord], batch_size: int = 256,
                       progress: bool = True, store: ImageStore | None = None,
                       rewrite: Callable[[str], str] | None = None,
                       relevance: torch.Tensor | None = None) -> dict[str, Any]:
    """Image<->text Recall@1/5/10 and ranks on captioned records (every caption of every image).

    `rewrite` changes each caption before it is embedded (e.g. `paraphrase`); relevance still
    follows the original captions. Returns {"strict": metrics where a text is relevant only to
    its own image, "text_match": metrics where identical captions of other images count too},
    and "true_of_image": metrics under `relevance` (e.g. `shapes_relevance`) when it is given.

    Example:
        >>> import tempfile
        >>> from polymodal.config import EncoderConfig
        >>> from polymodal.data.formats import read_records
        >>> from polymodal.data.shapes import write_shapes_world
        >>> from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=40, image_size=32, progress=False)
        >>> records = read_records("coco", folder / "captions.json", split="test")
        >>> cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32)
        >>> model = DualEncoder(cfg, WordTokenizer.build([c for r in records for c in r.captions]))
        >>> relevance = shapes_relevance(records, folder)
        >>> out = evaluate_retrieval(model, records, progress=False, relevance=relevance)  # untrained model
        >>> sorted(out), out["strict"]["images"], out["strict"]["texts"], "t2i_r1" in out["strict"]
        (['strict', 'text_match', 'true_of_image'], 4.0, 20.0, True)
        >>> tmp.cleanup()
    """
    model.eval()
    store = store if store is not None else ImageStore(records, model.cfg.image_size, True, progress=progress)
    given, records = len(records), store.records
    texts = [c for r in records for c in r.captions]
    owner = [i for i, r in enumerate(records) for _ in r.captions]
    sim = _embed_store(model, store, batch_size) @ model.embed_texts([rewrite(t) for t in texts] if rewrite else texts).T
    keys = [" ".join(split_words(t)) for t in texts]
    out = {"strict": retrieval_metrics(sim, owner), "text_match": retrieval_metrics(sim, owner, text_keys=keys)}
    if relevance is not None:
        if len(records) != given or relevance.shape != sim.shape:
            raise DataError("relevance does not match the records (were some images skipped?)")
        out["true_of_image"] = retrieval_metrics(sim, owner, relevance=relevance)
    return out


def _embed_store(model: nn.Module, store: ImageStore, batch_size: int) -> torch.Tensor:
    """Unit embeddings (N, E) of every image of an ImageStore, on the CPU."""
    n = len(store.records)
    return torch.cat([model.encode_image(normalize(torch.stack([store[i] for i in range(s, min(s + batch_size, n))]))
                                         .to(model.device)).float().cpu() for s in range(0, n, batch_size)])


@torch.inference_mode()
def hard_negative_accuracy(model: nn.Module, records: list[CaptionRecord], perturber: CaptionPerturber,
                           batch_size: int = 256, seed: int = 0, store: ImageStore | None = None) -> dict[str, float]:
    """How often an image scores its own caption above a hard negative of it (ARO, Yuksekgonul et al. 2023):
    "swap" (two words of a group trade places: which colour goes with which shape) and "replace" (one
    word becomes another of its group: red -> blue, three -> four). A bag-of-words model scores 50% on swaps.

    `store`: the records' images already decoded (as `evaluate_retrieval` takes it).

    Example:
        >>> import tempfile
        >>> from polymodal.config import EncoderConfig
        >>> from polymodal.data.formats import read_records
        >>> from polymodal.data.shapes import WORD_GROUPS, write_shapes_world
        >>> from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=40, image_size=32, progress=False)
        >>> records = read_records("coco", folder / "captions.json", split="test")
        >>> cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32)
        >>> model = DualEncoder(cfg, WordTokenizer.build([c for r in records for c in r.captions]))
        >>> out = hard_negative_accuracy(model, records, CaptionPerturber(WORD_GROUPS))  # untrained model
        >>> sorted(out), out["swap_pairs"], out["replace_pairs"]  # accuracies in %, and pairs compared
        (['replace', 'replace_pairs', 'swap', 'swap_pairs'], 15, 20)
        >>> tmp.cleanup()
    """
    model.eval()
    store = store if store is not None else ImageStore(records, model.cfg.image_size, True, progress=False)
    images, rng, out = _embed_store(model, store, batch_size), random.Random(seed), {}
    for kind in ("swap", "replace"):
        edit = getattr(perturber, kind)
        pairs = [(i, c, neg) for i, r in enumerate(store.records) for c in r.captions
                 if (neg := edit(c, rng)) is not None]
        if not pairs:
            continue
        paired = images[torch.tensor([i for i, _, _ in pairs])]  # each pair's image
        own = (paired * model.embed_texts([c for _, c, _ in pairs])).sum(-1)
        negative = (paired * model.embed_texts([n for _, _, n in pairs])).sum(-1)
        out[kind], out[f"{kind}_pairs"] = 100.0 * float((own > negative).float().mean()), len(pairs)
    return out


def retrieval_ceiling(records: list[CaptionRecord]) -> dict[str, float]:
    """The best strict R@1 any model can reach when identical captions tie (expected, random tie-break).

    A caption shared by m images is a text->image query with m equally right answers (1/m chance at
    R@1); an image whose every caption is shared is an image->text query with the same problem.
    """
    owners: dict[str, set[int]] = {}
    for i, r in enumerate(records):
        for c in r.captions:
            owners.setdefault(" ".join(split_words(c)), set()).add(i)
    t2i = [1.0 / len(owners[" ".join(split_words(c))]) for r in records for c in r.captions]
    i2t = [max(1.0 / len(owners[" ".join(split_words(c))]) for c in r.captions) for r in records if r.captions]
    return {"i2t_r1": 100.0 * sum(i2t) / len(i2t), "t2i_r1": 100.0 * sum(t2i) / len(t2i)}
