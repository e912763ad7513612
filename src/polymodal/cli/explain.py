"""`polymodal explain`: which image regions and which words an answer, a search match or a caption rests on.

Example:
    $ polymodal explain src/polymodal/assets/shapes_vqa scene.png --question "what colour is the circle?" --out why/
    $ polymodal explain src/polymodal/assets/shapes_dual_encoder scene.png --text "a large red circle" --out why/
    $ polymodal explain src/polymodal/assets/shapes_prefix_lm scene.png --out why/       # its own caption
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app, out_folder
from .kinds import load_for

OVERLAY_SIDE = 256  # the overlay is drawn on the image scaled to this square


@app.command("explain")
def explain_command(model_dir: Path = typer.Argument(..., help="a VQA model, dual encoder or captioner directory"),
                    image: Path = typer.Argument(..., help="the image"),
                    question: str | None = typer.Option(None, help="explain the VQA model's answer to this question"),
                    text: str | None = typer.Option(None, help="explain the match of this text (dual encoder) or "
                                                    "this caption (captioner; default its own)"),
                    method: str = typer.Option("occlusion", help="occlusion | gradient_x_input"),
                    grid: int = typer.Option(8, help="cells per side of the region grid"),
                    out: Path = typer.Option(Path("explanation"), "--out", help="folder for overlay.png and "
                                             "explanation.json")) -> None:
    """Explain one output: an overlay of the image regions it rests on, and each word's importance."""
    from ..data.images import load_image
    from ..errors import InputError
    from ..eval.explain import explain
    from ..eval.viz import explanation_overlay

    out = out_folder(out)
    picture = load_image(image)
    model = load_for("explain", model_dir)
    if question is None and callable(getattr(model, "fused_logits", None)):
        raise InputError(f"{model_dir}: a VQA model explains its answer to a question: add --question \"...\" "
                         f"(to only ask it: `polymodal vqa {model_dir} IMAGE \"QUESTION\"`)")
    try:
        why = explain(model, picture, question=question, text=text, method=method, grid=grid)
    except InputError as err:  # what this model cannot explain, said with its folder
        raise InputError(f"{model_dir}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    explanation_overlay(picture, why.regions, OVERLAY_SIDE).save(out / "overlay.png")
    (out / "explanation.json").write_text(json.dumps({"image": str(image), **why.to_dict()}, indent=1) + "\n",
                                          encoding="utf-8")
    typer.echo(f"{why.kind}: {why.output}  (score {why.score:.3f}, {method})")
    if why.words:
        ranked = sorted(why.words, key=lambda w: -w[1])
        typer.echo("words, most relied on first: " + ", ".join(f"{w} {s:+.2f}" for w, s in ranked))
    typer.echo(f"wrote {out / 'overlay.png'} and {out / 'explanation.json'}")
