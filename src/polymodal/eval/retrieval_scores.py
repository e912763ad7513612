"""Scoring a dual encoder's retrieval: Recall@K under three relevance rules, hard negative captions, ceilings.

Strict (only the image's own captions are relevant), text match (an identical caption of another image
counts) and, on Shapes World, true of the image (any caption the grammar can say of it counts); see
docs/retrieval.md for why all three are reported. Indexes and search live in `eval/retrieval.py`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import ImageStore
from ..data.images import normalize
from ..data.records import CaptionRecord
from ..errors import DataError
from ..text.perturb import CaptionPerturber, fix_articles
from ..text.tokenizer import split_words
from .caption_metrics import retrieval_metrics

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
