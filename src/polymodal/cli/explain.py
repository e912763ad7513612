"""`polymodal explain`: which image regions and which words an answer, a search match or a caption rests on; for a
video QA model, which frames, which moments of the sound and which words its answer about a clip rests on.

Example:
    $ polymodal explain src/polymodal/assets/shapes_vqa scene.png --question "what colour is the circle?" --out why/
    $ polymodal explain src/polymodal/assets/shapes_dual_encoder scene.png --text "a large red circle" --out why/
    $ polymodal explain src/polymodal/assets/shapes_prefix_lm scene.png --out why/       # its own caption
    $ polymodal explain runs/video_qa/model clip.mp4 --question "what shape is heard off screen?" --out why/
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from ..errors import InputError
from .app import app, is_still_image, out_folder
from .kinds import load_for

OVERLAY_SIDE = 256  # the overlay is drawn on the image scaled to this square


@app.command("explain")
def explain_command(model_dir: Path = typer.Argument(..., help="a VQA model, video QA model, dual encoder or "
                                                     "captioner directory"),
                    image: Path = typer.Argument(..., help="the image (for a video QA model: the video or sound file)"),
                    question: str | None = typer.Option(None, help="explain the (video) VQA model's answer to this "
                                                        "question"),
                    text: str | None = typer.Option(None, help="explain the match of this text (dual encoder) or "
                                                    "this caption (captioner; default its own)"),
                    method: str | None = typer.Option(None, help="images: deletion_preservation (default) | "
                                                      "occlusion | gradient_x_input; a clip: occlusion in time"),
                    grid: int = typer.Option(8, help="cells per side of the region grid"),
                    windows: int = typer.Option(8, help="video QA: equal windows the sound is cut into"),
                    out: Path = typer.Option(Path("explanation"), "--out", help="folder for overlay.png (timeline.png "
                                             "for a clip) and explanation.json")) -> None:
    """Explain one output: an overlay of the image regions it rests on (for a clip: its frames and sound windows on
    a timeline), and each word's importance."""
    from ..data.images import load_image
    from ..eval.explain import DEFAULT_METHOD, explain
    from ..eval.viz import explanation_overlay

    out = out_folder(out)
    model = load_for("explain", model_dir)
    if callable(getattr(model, "answer_clip", None)):
        return explain_clip_command(model, model_dir, image, question, method, windows, out)
    picture = load_image(image)
    if question is None and callable(getattr(model, "fused_logits", None)):
        raise InputError(f"{model_dir}: a VQA model explains its answer to a question: add --question \"...\" "
                         f"(to only ask it: `polymodal vqa {model_dir} IMAGE \"QUESTION\"`)")
    try:
        why = explain(model, picture, question=question, text=text, method=method or DEFAULT_METHOD, grid=grid)
    except InputError as err:  # what this model cannot explain, said with its folder
        raise InputError(f"{model_dir}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    explanation_overlay(picture, why.regions, OVERLAY_SIDE).save(out / "overlay.png")
    _write(out, "overlay.png", {"image": str(image), **why.to_dict()}, why)


def explain_clip_command(model: Any, model_dir: Path, clip_file: Path, question: str | None, method: str | None,
                         windows: int, out: Path) -> None:
    """A video QA answer: timeline.png (frames and sound windows with their scores) and explanation.json."""
    from ..data.images import denormalize
    from ..eval.explain_video import explain_clip
    from ..eval.viz import explanation_timeline
    from ..models.video_captioner import load_clip

    if question is None:
        raise InputError(f"{model_dir}: a video QA model explains its answer to a question about a clip: add "
                         f"--question \"...\" (to only ask it: `polymodal videoqa {model_dir} VIDEO \"QUESTION\"`)")
    if method not in (None, "occlusion"):
        raise InputError(f"{model_dir}: a video QA answer is explained by occlusion in time only (got --method "
                         f"{method}); leave out --method")
    if windows < 1:
        raise InputError(f"--windows must be at least 1, got {windows}")
    _refuse_still_image(clip_file, model_dir)
    clip = load_clip(clip_file, model.cfg.media)
    try:
        why = explain_clip(model, clip, question, windows=windows)
    except InputError as err:
        raise InputError(f"{model_dir}: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    frames = denormalize(clip["frames"]) if why.frames else None
    explanation_timeline(frames, why.frames, why.windows, why.sound,
                         f"{question}  ->  {why.output}  (log-odds {why.score:.2f})").save(out / "timeline.png")
    details = ["frames, most relied on first: " + ", ".join(f"{why.frame_times[i]:.2f}s {why.frames[i]:+.2f}"
                                                           for i in why.top_frames(3))] if why.frames else []
    details += ["sound, most relied on first: " + ", ".join(f"{why.windows[i][0]:.2f}-{why.windows[i][1]:.2f}s "
                                                          f"{why.sound[i]:+.2f}" for i in why.top_windows(3))
                ] if why.sound else []
    _write(out, "timeline.png", {"video": str(clip_file), "question": question, **why.to_dict()}, why, details)


def _refuse_still_image(path: Path, model_dir: Path) -> None:
    """A still image given for a clip: say so (the video reader would take a PNG for a one-frame video)."""
    if is_still_image(path):
        raise InputError(f"{path}: is an image, and {model_dir} is a video QA model that explains answers about a "
                         f"video or sound file; to explain an answer about an image use a VQA model")


def _write(out: Path, picture: str, data: dict[str, Any], why: Any, details: Sequence[str] = ()) -> None:
    """explanation.json, and what it says in a few lines (`details`: the frames and sound windows of a clip)."""
    (out / "explanation.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    typer.echo(f"{why.kind}: {why.output}  (score {why.score:.3f}, {why.method})")
    if why.words:
        ranked = sorted(why.words, key=lambda w: -w[1])
        typer.echo("words, most relied on first: " + ", ".join(f"{w} {s:+.2f}" for w, s in ranked))
    for line in details:
        typer.echo(line)
    typer.echo(f"wrote {out / picture} and {out / 'explanation.json'}")
