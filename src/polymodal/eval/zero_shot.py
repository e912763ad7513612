"""Zero-shot classification with a dual encoder: class names in prompt templates, no training.

OpenCLIP's recipe: each class is the normalized mean embedding of its prompts ("a {} shape" with the
class name filled in), and an image takes the class whose embedding is nearest.

Example:
    A trained dual encoder (`polymodal train configs/contrastive.yaml` writes runs/contrastive):

    >>> import polymodal
    >>> from polymodal.config import DataConfig
    >>> from polymodal.data.datasets import shapes_folder
    >>> model = polymodal.load("runs/contrastive/model")  # doctest: +SKIP
    >>> zero_shot_accuracy(model, shapes_folder(DataConfig(n=10000)), "colour")["accuracy"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError, InputError
from ..text.perturb import fix_articles
from .retrieval import embed_image_files

ZEROSHOT_TEMPLATES: dict[str, list[str]] = {  # data, not code: the class name fills the {}
    "shape": ["a {}", "a small {}", "a large {}", "there is a {}", "a photo of a {}", "a {} shape"],
    "colour": ["a {} circle", "a {} square", "a {} triangle", "a {} diamond", "a {} star", "a {} hexagon",
               "a {} shape", "there is a {} object"],
}


def fill_template(template: str, name: str) -> str:
    """"a {} circle" + "orange" -> "an orange circle"."""
    return fix_articles(template.format(name))


def zero_shot_classifier(embed_texts: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[str]) -> torch.Tensor:
    """OpenCLIP's prompt ensemble: (E, C), column c = the normalized mean of class c's template embeddings.

    Example:
        >>> words = ["a", "circle", "square", "shape"]
        >>> def embed_texts(texts):  # a toy text tower: word counts as unit vectors; a model's embed_texts
        ...     counts = torch.tensor([[float(t.split().count(w)) for w in words] for t in texts])
        ...     return torch.nn.functional.normalize(counts, dim=-1)
        >>> W = zero_shot_classifier(embed_texts, ["circle", "square"], ["a {}", "a {} shape"])
        >>> W.shape  # (E, classes)
        torch.Size([4, 2])
        >>> (embed_texts(["square", "a circle"]) @ W).argmax(-1).tolist()  # with a model: embed_images @ W
        [1, 0]
    """
    if not classnames or not templates:
        raise InputError("zero-shot needs at least one class name and one template")
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    emb = embed_texts(prompts).float().view(len(classnames), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(1), dim=-1).T  # (E, C)


def single_object_images(shapes_dir: str | Path, split: str = "test") -> list[tuple[str, dict[str, str]]]:
    """(image path, {"shape", "colour", "size"}) of every one-object Shapes World image of `split`."""
    root = Path(shapes_dir)
    try:
        files = {img["id"]: img["file_name"] for img in json.loads((root / "captions.json").read_text())["images"]}
        scenes = [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise DataError(f"{root}: not a Shapes World folder ({err}); write one with `polymodal data shapes`") from None
    return [(str(root / files[s["image_id"]]), {k: s["objects"][0][k] for k in ("shape", "colour", "size")})
            for s in scenes if s["split"] == split and len(s["objects"]) == 1]


def zero_shot_accuracy(model: nn.Module, shapes_dir: str | Path, task: str, split: str = "test",
                       templates: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Classify the shape or the colour of one-object Shapes World images by prompts alone.

    Example:
        >>> import tempfile
        >>> from polymodal.config import EncoderConfig
        >>> from polymodal.data.shapes import write_shapes_world
        >>> from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=40, image_size=32, progress=False)
        >>> cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32)
        >>> model = DualEncoder(cfg, WordTokenizer.build(["a large square shape"]))  # untrained
        >>> result = zero_shot_accuracy(model, folder, "shape")
        >>> result["task"], result["images"], round(result["chance"], 3)  # one one-object test image here
        ('shape', 1, 0.167)
        >>> tmp.cleanup()
    """
    from ..data.shapes import COLOURS, SHAPES

    classes = {"shape": list(SHAPES), "colour": list(COLOURS)}
    if task not in classes:
        raise InputError(f"zero-shot task {task!r}: choose shape or colour")
    items = single_object_images(shapes_dir, split)
    if not items:
        raise DataError(f"{shapes_dir}: no one-object images in split {split!r}")
    emb, kept, _ = embed_image_files(model, [p for p, _ in items], progress=progress)
    labels = {p: lab[task] for p, lab in items}
    weights = zero_shot_classifier(model.embed_texts, classes[task], templates or ZEROSHOT_TEMPLATES[task])
    predicted = (emb @ weights).argmax(-1).tolist()
    truth = [classes[task].index(labels[p]) for p in kept]
    per_class = {c: [p == t for p, t in zip(predicted, truth, strict=True) if t == k]
                 for k, c in enumerate(classes[task])}
    return {"task": task, "images": len(kept), "chance": 1 / len(classes[task]),
            "accuracy": sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(kept),
            "per_class": {c: sum(v) / len(v) for c, v in per_class.items() if v}}
