"""The `polymodal` command: one Typer app, one file per command group, all listed here.

Example:
    >>> import typer
    >>> from polymodal.cli import app
    >>> sorted(typer.main.get_command(app).commands)[:4]
    ['ablate', 'caption', 'chat', 'data']
"""

from . import captioning, explain, generate, retrieval, serve, speech, video, vqa  # noqa: F401  (each adds its commands to `app`)
from .app import app, data_app, main

__all__ = ["app", "data_app", "main"]
