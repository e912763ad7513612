"""The public Python API: `polymodal.load(dir)` rebuilds any saved model.

Example:
    >>> import tempfile
    >>> import polymodal
    >>> from polymodal.assets import bundled_model_dir
    >>> from polymodal.data.shapes import Scene, ShapeObject, render
    >>> model = polymodal.load(bundled_model_dir())  # any saved model folder, e.g. "runs/attention_lstm"
    >>> tmp = tempfile.TemporaryDirectory()
    >>> render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64).save(f"{tmp.name}/a.png")
    >>> model.caption([f"{tmp.name}/a.png"], beam_size=3)
    ['a large red circle']
    >>> tmp.cleanup()
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from torch import nn

from .checkpoint import read_model_dir, resolve_model_dir
from .errors import CheckpointError, ConfigError, InputError
from .registry import MODELS

Fix = str | Callable[[str], str]  # what to do instead; a function gets the architecture found


def load(path: str | Path) -> nn.Module:
    """Load a model directory (config.json + tokenizer.json + model.safetensors) of any architecture.

    A folder of pretrained CLIP weights (Hugging Face `CLIPModel` or OpenCLIP layout) loads as a
    dual encoder (models/clip_folder.py, docs/pretrained.md). Out-of-distribution statistics saved with the
    model (`ood_stats.safetensors`, eval/ood.py) come along as `model.ood_stats` (None when there are none); a video model's, one per
    modality, as `model.ood_stats_by_input`.

    Raises:
        CheckpointError: the directory is missing, incomplete, corrupt or mixes files of different saves.
    """
    from .eval.ood import FeatureStats, load_clip_stats
    from .models.clip_folder import clip_layout, load_clip_folder

    if clip_layout(path) is not None:
        return load_clip_folder(path)
    folder = resolve_model_dir(path)
    config, _ = read_model_dir(folder)
    name = config["architecture"]
    if name not in MODELS:
        raise CheckpointError(f"{folder}/config.json: unknown architecture {name!r}; "
                              f"this polymodal knows {MODELS.names()}")
    try:
        model = MODELS.get(name).from_pretrained(folder)
    except ConfigError as err:  # a bad config.json is a broken checkpoint, whatever section it is in
        raise CheckpointError(str(err)) from None
    model.ood_stats = FeatureStats.load(folder)  # None: saved without them, so inputs are not checked
    model.ood_stats_by_input = load_clip_stats(model, folder)  # video models: one per modality
    return model


def load_expecting(path: str | Path, architecture: str | Collection[str], fix: Fix) -> nn.Module:
    """`load`, after checking the model is a kind a command needs; `fix` says how to go on (see `check_architecture`).

    Example:
        >>> from polymodal.assets import bundled_model_dir
        >>> load_expecting(bundled_model_dir(), "prefix_lm", "train one").architecture
        'prefix_lm'
        >>> fix = "train one with `polymodal train configs/vqa.yaml`"
        >>> load_expecting(bundled_model_dir(), "vqa", fix)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        polymodal.errors.InputError: ...shapes_prefix_lm: is a prefix_lm model, not a vqa model; train one ...

    Raises:
        InputError: the directory holds a model of another architecture.
    """
    check_architecture(path, architecture, fix)
    return load(path)


def check_architecture(path: str | Path, architecture: str | Collection[str], fix: Fix) -> str:
    """The architecture of the model directory at `path`, read from config.json alone (no weights).

    Args:
        path: a model directory or a training run directory.
        architecture: the architecture (or architectures) the caller can use.
        fix: what to do instead, or a function of the architecture found that says it.

    Raises:
        CheckpointError: no model directory at `path`.
        InputError: the directory holds a model of another architecture.
    """
    from .models.clip_folder import clip_layout

    expected = (architecture,) if isinstance(architecture, str) else tuple(architecture)
    found = "dual_encoder" if clip_layout(path) is not None else str(read_model_dir(path)[0]["architecture"])
    if found not in expected:
        wanted = " or ".join(filter(None, [", ".join(expected[:-1]), expected[-1]]))
        raise InputError(f"{path}: is a {found} model, not a {wanted} model; {fix(found) if callable(fix) else fix}")
    return found
