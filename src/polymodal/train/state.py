"""Trainer state for exact resume: optimizer tensors in safetensors, everything else in JSON. No pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_safetensors, save_tensors
from ..errors import CheckpointError

STATE_FILE, OPTIMIZER_FILE = "trainer_state.json", "optimizer.safetensors"


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat tensors ('state.<param>.<name>') and JSON metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _to_json(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_to_tuple(meta["python"]))
    kind, keys, *rest = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def write_trainer_state(folder: Path, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Write optimizer + RNG tensors and the JSON progress record into `folder`."""
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_tensors(folder / OPTIMIZER_FILE, {**opt_tensors, **rng_tensors})
    (folder / STATE_FILE).write_text(json.dumps({**progress, "optimizer": opt_meta, "rng": rng_meta}))


def read_trainer_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        progress = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: unreadable trainer state ({err}); "
                              f"delete {folder} to start over") from None
    return progress, read_safetensors(folder / OPTIMIZER_FILE)


def restore_trainer_state(optimizer: torch.optim.Optimizer, progress: dict[str, Any],
                          tensors: dict[str, torch.Tensor]) -> None:
    opt = {k: v for k, v in tensors.items() if k.startswith("state.")}
    optimizer.load_state_dict(optimizer_from_files(opt, progress["optimizer"]))
    set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, progress["rng"])


def drop_partial_line(path: Path) -> None:
    """Cut a JSON-lines file after its last complete line: a kill -9 can leave half a record at the end,
    which a resumed run would otherwise glue to its first record (and `polymodal curves` would refuse)."""
    if not path.is_file():
        return
    with open(path, "r+b") as fh:
        end = fh.seek(0, 2)
        pos = end
        while pos > 0:
            step = min(pos, 65536)
            fh.seek(pos - step)
            block = fh.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                pos = pos - step + cut + 1
                break
            pos -= step
        if pos < end:
            fh.truncate(pos)
