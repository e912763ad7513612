"""The public Python API: `polymodal.load(dir)` rebuilds any saved model.

Example:
    >>> import polymodal
    >>> model = polymodal.load("runs/attention_lstm")  # doctest: +SKIP
    >>> model.caption(["a.png"], beam_size=3)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .checkpoint import read_model_dir, resolve_model_dir
from .errors import CheckpointError, ConfigError, InputError
from .registry import MODELS


def load(path: str | Path) -> nn.Module:
    """Load a model directory (config.json + tokenizer.json + model.safetensors) of any architecture.

    Raises:
        CheckpointError: the directory is missing, incomplete, corrupt or mixes files of different saves.
    """
    folder = resolve_model_dir(path)
    config, _ = read_model_dir(folder)
    name = config["architecture"]
    if name not in MODELS:
        raise CheckpointError(f"{folder}/config.json: unknown architecture {name!r}; "
                              f"this polymodal knows {MODELS.names()}")
    try:
        return MODELS.get(name).from_pretrained(folder)
    except ConfigError as err:  # a bad config.json is a broken checkpoint, whatever section it is in
        raise CheckpointError(str(err)) from None


def load_expecting(path: str | Path, architecture: str, fix: str) -> nn.Module:
    """`load`, then check the model is the kind a command needs; `fix` says how to get one.

    Example:
        >>> load_expecting("runs/vqa", "vqa", "train one with `polymodal train configs/vqa.yaml`")  # doctest: +SKIP

    Raises:
        InputError: the directory holds a model of another architecture.
    """
    model = load(path)
    if getattr(model, "architecture", None) != architecture:
        raise InputError(f"{path}: is a {getattr(model, 'architecture', '?')} model, not a {architecture} "
                         f"model; {fix}")
    return model
