"""The one checkpoint writer: a model directory of config.json + tokenizer.json + model.safetensors.

Everything is written atomically (temp directory, fsync, rename), so a crash never leaves a
half-written model behind. Nothing is pickled: tensors go to safetensors, the rest to JSON.

Example:
    >>> import tempfile
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model, tokenizer = nn.Linear(2, 3), WordTokenizer.build(["a red circle"])
    >>> folder = save_model_dir(f"{tmp.name}/model", {"architecture": "captioner"}, model, tokenizer)
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors', 'tokenizer.json']
    >>> config, tokenizer = read_model_dir(folder)
    >>> config, len(tokenizer), sorted(read_safetensors(folder / WEIGHTS_FILE))
    ({'architecture': 'captioner'}, 7, ['bias', 'weight'])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from .assets import ASSETS
from .errors import CheckpointError
from .text.tokenizer import Tokenizer, load_tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
PAUSE_AT, PAUSE_FILE = "POLYMODAL_PAUSE_AT", "POLYMODAL_PAUSE_FILE"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """A named moment inside a write, where crash tests kill the process (tests/test_crash_resume.py).

    With `POLYMODAL_PAUSE_AT=<name>:<n>` set, the n-th pass through `name` in this process writes its
    pid to the file named by `POLYMODAL_PAUSE_FILE` and sleeps until the test sends SIGKILL. Without
    the variable this is a dictionary lookup and nothing else.
    """
    spec = os.environ.get(PAUSE_AT)
    if not spec or spec.partition(":")[0] != name:
        return
    _passes[name] += 1
    if _passes[name] == int(spec.partition(":")[2] or 1):
        Path(os.environ[PAUSE_FILE]).write_text(str(os.getpid()))
        while True:
            time.sleep(1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_directory(path: str | Path) -> Path:
    """Undo what a crash (kill -9, power loss) inside `atomic_directory` left behind.

    If the crash came between its two renames, `path` is gone and its previous copy is `path.old`:
    rename it back. Temp folders of unfinished writes (`.name.tmp-*`) are removed. Safe to call
    any time no other process is writing `path`, and from every rank of a DDP run at once.
    """
    path = Path(path)
    old = path.parent / f"{path.name}.old"
    if not path.exists() and old.is_dir():
        with contextlib.suppress(FileNotFoundError):  # another rank of a DDP run renamed it first
            os.replace(old, path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces `path` as a whole, on failure it is removed.

    The old directory is moved aside before the new one is renamed in; `recover_directory` (run
    first here, and by readers) restores that `.old` copy if a crash lands between the two renames.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        recover_directory(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot create the output folder ({err.strerror or err}); "
                              f"check the path and its permissions") from None
    try:
        yield tmp
        crash_point("files_written")
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = path.parent / f"{path.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        crash_point("between_renames")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        crash_point("committed")
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:  # disk full, permissions, a file where a folder should be
        raise CheckpointError(f"{path}: writing failed ({err.strerror or err}); the previous copy is untouched; "
                              f"free disk space or check permissions, then save again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_model_files(folder: Path, config: dict[str, Any], model: nn.Module, tokenizer: Tokenizer | None) -> None:
    """Write the three model files into an existing folder (used inside `atomic_directory`)."""
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_model(model, str(folder / WEIGHTS_FILE))  # handles tied (shared) tensors
    crash_point("weights_written")
    if tokenizer is not None:
        tokenizer.save(folder / TOKENIZER_FILE)


def save_model_dir(path: str | Path, config: dict[str, Any], model: nn.Module,
                   tokenizer: Tokenizer | None = None) -> Path:
    with atomic_directory(path) as tmp:
        write_model_files(tmp, config, model, tokenizer)
    return Path(path)


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model directory, a training run directory (uses its `model/`), a crash-left `.old`, or the name of
    a bundled model (`polymodal models` lists them) where no such path exists here."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1 and (ASSETS / path.name / CONFIG_FILE).is_file():
        return ASSETS / path.name
    for candidate in (path, path / "model", path.parent / f"{path.name}.old"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: model directory not found; train one with `polymodal train` "
                              f"or name a bundled model (`polymodal models` lists them)")
    raise CheckpointError(f"{path}: no {CONFIG_FILE} here; pass a model directory (it holds "
                          f"{CONFIG_FILE}, {TOKENIZER_FILE} and {WEIGHTS_FILE}) or a training run directory")


def read_model_dir(path: str | Path) -> tuple[dict[str, Any], Tokenizer | None]:
    """Read config.json and tokenizer.json (if any) of a model directory."""
    path = resolve_model_dir(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE}: not valid JSON ({err}); the checkpoint is corrupt") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE}: no 'architecture' key, so not a polymodal model config; "
                              f"pass a directory written by save_pretrained or `polymodal train`")
    tokenizer = load_tokenizer(path / TOKENIZER_FILE) if (path / TOKENIZER_FILE).exists() else None
    return config, tokenizer


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing; the directory is incomplete: re-save or re-train it, "
                              f"or copy the whole directory from one save")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); "
                              f"it is truncated or not safetensors, re-save or re-train the model") from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load model.safetensors into `model`, refusing missing, unexpected or mis-shaped tensors."""
    path = Path(path)
    state = read_safetensors(path / WEIGHTS_FILE if path.is_dir() else path)
    own = model.state_dict()
    # Tied weights are stored once; their aliases count as present.
    stored = set(state)
    missing = [k for k in own if k not in stored and not _is_alias(model, k, stored)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(x for x in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else "") if x)
        raise CheckpointError(f"{path}: weights do not match the model that config.json and tokenizer.json "
                              f"describe ({detail}); the directory mixes files from different saves: "
                              f"use all three files of one save, or re-train")
    model.load_state_dict(state, strict=False)


def _is_alias(model: nn.Module, key: str, stored: set[str]) -> bool:
    tensor = model.state_dict()[key]
    return any(k in stored and v.data_ptr() == tensor.data_ptr() for k, v in model.state_dict().items() if k != key)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
