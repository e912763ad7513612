"""Generated datasets on disk, written once and never half: a temporary folder moved into place.

Shapes World and the outside test bed both write with `write_dataset_folder`: if the folder already
holds the same dataset (its captions.json "info" equals the generator's parameters) it is returned at
once; otherwise everything is written into a temporary folder beside it and moved in with one
`os.replace`. When two processes write the same dataset, the second finds the first one's and uses it.

Example:
    >>> import json, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> def write(root):  # captions.json last: its presence marks completion
    ...     _ = (root / "captions.json").write_text(json.dumps({"info": {"n": 1}}))
    >>> out = write_dataset_folder(f"{tmp.name}/data", {"n": 1}, write, "a toy dataset")
    >>> write_dataset_folder(out, {"n": 1}, None, "a toy dataset") == out  # already there: nothing written
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def is_complete(out: Path, info: dict[str, Any], files: Sequence[str] = ("captions.json",)) -> bool:
    """True when `out` holds every one of `files` and its captions.json was written with exactly `info`."""
    try:
        if not all((out / f).is_file() for f in files):
            return False
        with open(out / "captions.json", encoding="utf-8") as f:
            return json.load(f).get("info") == json.loads(json.dumps(info))
    except (OSError, ValueError, AttributeError):
        return False


def write_dataset_folder(out_dir: str | os.PathLike, info: dict[str, Any], write: Callable[[Path], None] | None,
                         what: str, files: Sequence[str] = ("captions.json",)) -> Path:
    """`out_dir` holding the dataset described by `info`, written by `write(folder)` unless it is already there.

    Raises:
        ConfigError: `out_dir` exists and holds something else (`what` names the dataset in the message).
    """
    out = Path(out_dir)
    if is_complete(out, info, files):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        settings = ", ".join(f"{k}={v}" for k, v in info.items() if k in ("n", "seed", "image_size"))
        raise ConfigError(f"{out}: exists and is not {what} with {settings}; choose another output folder or "
                          f"remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        write(tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.replace will not overwrite a directory on every OS
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(out, info, files):  # another process finished the same dataset first
            return out
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
