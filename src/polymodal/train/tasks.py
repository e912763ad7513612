"""Read a task's config. Each task is a function in `registry.TASKS` (filled in train/__init__.py) with a `config_cls`
attribute: the dataclass its YAML config is validated against.

Example:
    >>> task, cfg = load_task_config(None, ["task=vqa", "train.steps=10"])  # or "configs/vqa.yaml", [...]
    >>> task.__name__, type(cfg).__name__, cfg.train.steps
    ('train_vqa', 'VQAExperimentConfig', 10)
    >>> summary = task(cfg)  # trains (and writes Shapes World on first use)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import apply_overrides, from_dict, read_yaml
from ..errors import ConfigError
from ..registry import TASKS


def load_task_config(path: str | Path | None, overrides: list[str]) -> tuple[Callable[..., Any], Any]:
    """Read YAML + overrides, pick the task named by its `task` key, validate against that task's config."""
    data = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        task = TASKS.get(str(data.get("task", "captioning")))
    except ConfigError as err:  # name the file the bad `task:` came from
        raise ConfigError(f"{path or 'config'}: task: {err}") from None
    return task, from_dict(task.config_cls, data, str(path) if path else "config")
