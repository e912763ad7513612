"""`polymodal generate`: draw images from a text prompt with a text -> image model (registered on the main app).

Example:
    $ polymodal generate runs/text_to_image "a small red circle to the left of a large blue square" \\
        --n 4 --seed 0 --steps 20 --guidance 3 --out out/
    wrote 4 images and out/contact_sheet.png
    $ polymodal generate runs/text_to_image_layout "a large red circle" --box 0.5,0.5,1,1   # in the bottom right
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import InputError
from .app import app, comma_numbers, out_folder
from .kinds import load_for


@app.command("generate")
def generate_command(model_dir: Path = typer.Argument(..., help="text -> image model directory (or its run directory)"),
                     prompt: str = typer.Argument(..., help='what to draw, e.g. "a small red circle above a blue star"'),
                     n: int = typer.Option(4, "--n", help="how many images (1-64)"),
                     seed: int = typer.Option(0, help="random seed: the same seed draws the same images"),
                     steps: int | None = typer.Option(None, help="sampler steps (default: the model's, e.g. 20)"),
                     guidance: float | None = typer.Option(None, help="classifier-free guidance scale; 0 ignores the "
                                                           "prompt (default: the model's, e.g. 3)"),
                     box: str | None = typer.Option(None, "--box", metavar="X0,Y0,X1,Y1",
                                                    help="draw it inside this box (in [0, 1], y down); the planning "
                                                    "generator, or a discrete one trained with layouts"),
                     strict_box: bool = typer.Option(False, "--strict-box", help="draw nothing outside the box "
                                                     "(objects land in it more often, drawn worse)"),
                     out: Path = typer.Option(Path("out"), help="folder for image_NN.png and contact_sheet.png"),
                     quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """Draw images of a prompt: PNGs and a contact sheet; words the model does not know are named on stderr."""
    from ..eval.generation_stats import image_grid

    out_folder(out)
    if not prompt.strip():
        raise InputError("empty prompt; describe the image, e.g. \"a small red circle\"")
    model = load_for("generate", model_dir)
    steps = model.cfg.steps if steps is None else steps
    guidance = model.cfg.guidance if guidance is None else guidance
    model.check_request([prompt], n, steps, guidance)  # before any work: one line and exit 2
    layout = comma_numbers("--box", box, 4)
    model.check_layout(layout)
    unknown = model.unknown_words(prompt)
    if unknown:
        typer.echo(f"warning: unknown words ignored (read as <unk>): {', '.join(dict.fromkeys(unknown))}", err=True)
    started = time.perf_counter()
    images = model.generate_images(prompt, n=n, seed=seed, steps=steps, guidance=guidance, progress=not quiet,
                                   box=layout, strict_box=strict_box)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    for j, image in enumerate(images):
        image.save(out / f"image_{j:02d}.png")
    image_grid(images, columns=min(n, 8)).save(out / "contact_sheet.png")
    typer.echo(f"wrote {n} images and {out / 'contact_sheet.png'} ({seconds:.1f} s, {steps} steps, guidance {guidance:g})")
