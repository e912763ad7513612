"""Errors a user can cause. Each message names the file, the record and what to do.

The CLI catches `PolymodalError`, prints its one-line message and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class for every error caused by user input (files, configs, requests)."""


class DataError(PolymodalError):
    """A data file or record cannot be read: bad image, broken annotation, missing key."""


class ConfigError(PolymodalError):
    """A configuration value or key is wrong."""


class CheckpointError(PolymodalError):
    """A model directory is missing, corrupt, or does not match its config."""


class InputError(PolymodalError):
    """A request or command-line argument is invalid."""
