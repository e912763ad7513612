"""The `polymodal` Typer app and its entry point; the commands live one group per file beside it.

Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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


def warn_if_unlike(model: Any, model_dir: Path | str, inputs: list[Any], names: list[str], guess: str,
                   kind: str = "images") -> list[dict]:
    """Check inputs against the statistics saved with `model` (eval/ood.py) and print one warning line per input
    unlike its training `kind` ("images", "recordings"), saying the output (`guess`: "the caption") is a guess;
    returns the checks ({} each when the model has no statistics)."""
    from ..eval.ood import check_inputs

    checks = (check_inputs(model, inputs) if inputs else None) or [{} for _ in inputs]
    for name, check in zip(names, checks, strict=True):
        if check.get("in_distribution") is False:
            typer.echo(f"warning: {name}: unlike the {kind} {model_dir} was trained on (out-of-distribution score "
                       f"{check['ood_score']:.1f} > {model.ood_stats.threshold:.1f}); {guess} is a guess", err=True)
    return checks


def comma_numbers(flag: str, text: str | None, count: int) -> tuple[float, ...] | None:
    """"0.2,0.5" -> (0.2, 0.5); InputError unless `count` comma-separated numbers (None stays None)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(f"{flag} {text!r}: give {count} comma-separated numbers in [0, 1], e.g. "
                         f"{flag} {','.join(['0.5'] * count)}")
    return values


def is_still_image(path: Path) -> bool:
    """Whether `path` is a still image (PIL reads its header only), where a video or sound file was wanted; a file
    that is no image (or is missing) is left to the video reader, which names the problem."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return getattr(picture, "n_frames", 1) == 1
    except (OSError, UnidentifiedImageError):
        return False


def main() -> None:
    try:
        app()  # click handles usage errors itself: message + exit status 2
    except PolymodalError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
