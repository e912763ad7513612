"""Name -> builder registries (timm style): one per component family, no if-chains.

Example:
    >>> from polymodal.registry import Registry
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("unit")
    ... def build_unit():
    ...     return 1
    >>> SHAPES.build("unit")
    1
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


class Registry:
    """Maps names to builder callables; unknown names fail with a did-you-mean."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            close = difflib.get_close_matches(name, self._builders, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} (choose from: {', '.join(self.names())})")
        return self._builders[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders


ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")
DATASETS = Registry("dataset format")
FUSION = Registry("fusion")
TOKENIZERS = Registry("tokenizer")
MODELS = Registry("model architecture")
TASKS = Registry("training task")
