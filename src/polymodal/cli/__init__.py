"""The `polymodal` command: one Typer app, one file per command group, all listed here.

Example:
    >>> from polymodal.cli import app
    >>> sorted(c.name for c in app.registered_commands)[:3]
    ['ablate', 'caption', 'chat']
"""

from . import captioning, retrieval, serve, video, vqa  # noqa: F401  (each adds its commands to `app`)
from .app import app, data_app, main

__all__ = ["app", "data_app", "main"]
