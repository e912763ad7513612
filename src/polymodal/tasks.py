"""Training tasks. Each task is a function registered in `registry.TASKS` with a `config_cls`
attribute: the dataclass its YAML config is validated against.

Example:
    >>> task, cfg = load_task_config("configs/attention_lstm.yaml", ["train.steps=10"])  # doctest: +SKIP
    >>> task(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import apply_overrides, from_dict, read_yaml
from .errors import ConfigError
from .registry import TASKS
from .train import (
    captioning,  # noqa: F401  (registers "captioning")
    chat,  # noqa: F401  (registers "chat")
    contrastive,  # noqa: F401  (registers "contrastive")
    lm_pretrain,  # noqa: F401  (registers "lm_pretrain")
    prefix_lm,  # noqa: F401  (registers "prefix_lm")
    refine,  # noqa: F401  (registers "refine")
    scst,  # noqa: F401  (registers "scst")
    video,  # noqa: F401  (registers "video_caption" and "video_qa")
    vqa,  # noqa: F401  (registers "vqa")
)


def load_task_config(path: str | Path | None, overrides: list[str]) -> tuple[Callable[..., Any], Any]:
    """Read YAML + overrides, pick the task named by its `task` key, validate against that task's config."""
    data = apply_overrides(read_yaml(path) if path else {}, overrides)
    try:
        task = TASKS.get(str(data.get("task", "captioning")))
    except ConfigError as err:  # name the file the bad `task:` came from
        raise ConfigError(f"{path or 'config'}: task: {err}") from None
    return task, from_dict(task.config_cls, data, str(path) if path else "config")
