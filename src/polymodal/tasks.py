"""Importing this module registers every training task in `registry.TASKS`."""

from .train import captioning  # noqa: F401
