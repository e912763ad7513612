"""Reading a local Hugging Face model folder (config.json + model.safetensors) through a key map.

The checks every foreign checkpoint gets (STYLE.md, trait 8): a file tensor the map does not place
is "unexpected", a mapped tensor the file lacks is "missing", and shapes must agree; any of them
raises one CheckpointError line naming the file and the first keys. Nothing is downloaded.

Example:
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> folder = tempfile.TemporaryDirectory()
    >>> save_file({"dense.weight": torch.ones(2, 3)}, f"{folder.name}/model.safetensors")
    >>> layer = nn.Linear(3, 2, bias=False)
    >>> load_mapped(layer, Path(folder.name) / "model.safetensors", read_weights(folder.name),
    ...             {"dense.weight": "weight"}, "Dense")
    1
    >>> load_mapped(nn.Linear(3, 2), Path(folder.name) / "model.safetensors", read_weights(folder.name),
    ...             {"dense.weight": "weight", "dense.bias": "bias"}, "Dense")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    polymodal.errors.CheckpointError: .../model.safetensors: Dense weights do not fit: missing ['dense.bias'] (1); ...
    >>> folder.cleanup()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import read_safetensors
from ..errors import CheckpointError


@dataclass
class LoadReport:
    """What a conversion from a foreign folder did: tensors filled, and the keys that did not match (all empty
    when it succeeded); every key map (GPT-2, CLIP, Llama) reports with it."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def problems(self) -> str:
        """One line naming the first keys of each kind of problem ('' when there is none)."""
        return "; ".join(f"{name} {values[:3]} ({len(values)})" for name, values in
                         (("missing", self.missing), ("unexpected", self.unexpected),
                          ("shape mismatch", self.mismatched)) if values)


def read_config(path: str | Path, name: str = "config.json") -> tuple[Path, dict[str, Any]]:
    """`path/name` as a JSON object, with the file's path for error messages."""
    file = Path(path) / name
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; a Hugging Face model folder holds config.json and "
                              f"model.safetensors") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return file, data


def model_type(path: str | Path) -> str | None:
    """config.json's `model_type`, or None when there is no readable config.json."""
    try:
        value = read_config(path)[1].get("model_type")
    except CheckpointError:
        return None
    return value if isinstance(value, str) else None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """`path/model.safetensors`; a pickle (.bin) or a sharded index is refused with what to do."""
    folder = Path(path)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        other = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.safetensors.index.json")]
        hint = f" (found {other[0]}: convert it to a single model.safetensors)" if other else ""
        raise CheckpointError(f"{weights}: missing{hint}; only safetensors weights are read, never pickles")
    return read_safetensors(weights)


def load_mapped(module: nn.Module, file: Path, state: dict[str, torch.Tensor], mapping: dict[str, str],
                what: str, ignored: tuple[str, ...] = ()) -> int:
    """Copy `state` (read from `file`) into `module` through `mapping` (file key -> module key).

    Keys starting with one of `ignored` are skipped (heads and buffers the module does not use).
    Returns the number of tensors copied; raises CheckpointError on any mismatch, copying nothing.
    """
    own = module.state_dict()
    unexpected = [k for k in state if k not in mapping and not k.startswith(ignored)]
    missing = [k for k in mapping if k not in state]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[ours].shape)}" for k, ours in mapping.items()
                  if k in state and state[k].shape != own[ours].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{name} {values[:3]} ({len(values)})" for name, values in
                           (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                           if values)
        raise CheckpointError(f"{file}: {what} weights do not fit: {detail}; is config.json from the same model?")
    module.load_state_dict({ours: state[k].to(own[ours].dtype) for k, ours in mapping.items()}, strict=True)
    return len(mapping)
