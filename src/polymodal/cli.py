"""The `polymodal` command. Errors a user can cause print one line and exit with status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .errors import PolymodalError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="polymodal: multimodal language models that read images and answer in text.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or convert datasets.")
app.add_typer(data_app, name="data")


@app.command()
def train(config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/attention_lstm.yaml"),
          overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.steps=500"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train a model from a YAML config; resumes from the run's last checkpoint if there is one."""
    from . import tasks  # noqa: F401  (registers every task)
    from .config import load_config
    from .registry import TASKS

    cfg = load_config(config, overrides or [])
    summary = TASKS.get(cfg.task)(cfg, progress=not quiet)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def caption(model_dir: Path = typer.Argument(..., help="model directory (or a training run directory)"),
            images: list[Path] = typer.Argument(..., help="image files"),
            beam: int = typer.Option(3, help="beam size; 1 = greedy"),
            nbest: int = typer.Option(1, help="captions per image (n-best from the beam)"),
            as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of text")) -> None:
    """Caption images with a trained model."""
    from .api import load

    model = load(model_dir)
    strategy = "beam" if beam > 1 else "greedy"
    for path in images:
        results = model.caption_nbest([path], strategy=strategy, beam_size=beam,
                                      num_return_sequences=min(nbest, beam))[0]
        if as_json:
            typer.echo(json.dumps({"image": str(path), "captions": results}))
        else:
            typer.echo(f"{path}: {results[0]}" + "".join(f"\n    {c}" for c in results[1:]))


@data_app.command("shapes")
def data_shapes(out: Path = typer.Option(..., help="output folder"),
                n: int = typer.Option(5000, help="images in train+val+test (heldout comes on top)"),
                seed: int = typer.Option(0), size: int = typer.Option(128, help="image size in pixels")) -> None:
    """Write Shapes World to disk: images, COCO captions JSON, QA JSONL."""
    from .data.shapes import write_shapes_world

    folder = write_shapes_world(out, n=n, seed=seed, image_size=size)
    typer.echo(f"wrote Shapes World to {folder} (captions.json, qa.jsonl, images/)")


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="where the demo writes its report")) -> None:
    """The main job: Shapes World, a trained captioner, captions beside their references."""
    from .demo import run_demo

    run_demo(out)


def main() -> None:
    try:
        app()  # click handles usage errors itself: message + exit status 2
    except PolymodalError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
