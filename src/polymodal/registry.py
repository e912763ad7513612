"""Name -> builder registries (timm style): one per component family, no if-chains.

Every registry the library uses is declared here, and each is filled in one visible place: a table
in the `__init__.py` of the package named by `filled_by` (models/ for MODELS, nn/ for the building
blocks, train/ for TASKS, data/ and text/ for readers and tokenizers). A lookup imports that package
first, so a name is found whichever module the caller happened to import, and a module that fails to
import fails loudly instead of leaving its names unknown.

Example:
    >>> from polymodal.registry import Registry
    >>> SHAPES = Registry("shape")
    >>> SHAPES.fill({"unit": lambda: 1})
    >>> SHAPES.build("unit")
    1
    >>> @SHAPES.register("pair")
    ... def build_pair():
    ...     return 2
    >>> SHAPES.names()
    ['pair', 'unit']
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError


class Registry:
    """Maps names to builder callables; unknown names fail with a did-you-mean.

    `filled_by` names the package whose import fills the registry (imported on first lookup).
    """

    def __init__(self, kind: str, filled_by: str | None = None):
        self.kind = kind
        self.filled_by = filled_by
        self._builders: dict[str, Callable[..., Any]] = {}

    def _add(self, name: str, builder: Callable[..., Any]) -> None:
        if name in self._builders:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._builders[name] = builder

    def fill(self, table: Mapping[str, Callable[..., Any]]) -> None:
        """Register every `name: builder` of `table` (the package tables use this)."""
        for name, builder in table.items():
            self._add(name, builder)

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator for a user's own builder (`@FUSION.register("mine")`), added beside the built-in ones."""
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            self._add(name, builder)
            return builder

        return decorator

    def _builders_filled(self) -> dict[str, Callable[..., Any]]:
        if self.filled_by is not None:
            importlib.import_module(self.filled_by)  # a no-op once imported (or while it is importing)
        return self._builders

    def get(self, name: str) -> Callable[..., Any]:
        builders = self._builders_filled()
        if name not in builders:
            close = difflib.get_close_matches(name, builders, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint} (choose from: {', '.join(self.names())})")
        return builders[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders_filled())

    def __contains__(self, name: str) -> bool:
        return name in self._builders_filled()


# The library's registries, with the package that fills each.
ENCODERS = Registry("encoder", filled_by="polymodal.nn")
DECODERS = Registry("decoder", filled_by="polymodal.nn")
TEXT_ENCODERS = Registry("text encoder", filled_by="polymodal.nn")
QUESTION_ENCODERS = Registry("question encoder", filled_by="polymodal.nn")
TEMPORAL = Registry("temporal model", filled_by="polymodal.nn")
FUSION = Registry("fusion", filled_by="polymodal.nn")
DATASETS = Registry("dataset format", filled_by="polymodal.data")
STREAMS = Registry("streaming dataset format", filled_by="polymodal.data")
SAMPLERS = Registry("frame sampler", filled_by="polymodal.data")
TOKENIZERS = Registry("tokenizer", filled_by="polymodal.text")
MODELS = Registry("model architecture", filled_by="polymodal.models")
TASKS = Registry("training task", filled_by="polymodal.train")
