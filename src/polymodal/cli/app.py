"""The `polymodal` Typer app and its entry point; the commands live one group per file beside it.

Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ..errors import InputError, PolymodalError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="polymodal: multimodal language models that read images and answer in text.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or convert datasets.")
app.add_typer(data_app, name="data")


def out_folder(path: Path, option: str = "--out") -> Path:
    """An output folder of a command: refuse an existing file now, not with a traceback half-way through."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file; pass {option} a folder (it is created if missing)")
    return path


def main() -> None:
    try:
        app()  # click handles usage errors itself: message + exit status 2
    except PolymodalError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
