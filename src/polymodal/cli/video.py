"""`polymodal data shapes-video`, `polymodal keyframes`, `polymodal describe` and `polymodal videoqa`.

Example:
    $ polymodal data shapes-video --out shapes_video --n 120
    $ polymodal keyframes shapes_video/videos/test/test_00000.mp4 -k 5 --out keyframes/
    $ polymodal describe shapes_video/videos/test/test_00000.mp4      # the bundled video captioner
    $ polymodal train configs/video_caption.yaml          # about 10 minutes on 1 CPU core
    $ polymodal describe shapes_video/videos/test/test_00000.mp4 --model runs/video_caption
    $ polymodal videoqa runs/video_qa clip.mp4 "what shape is heard off screen?"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import InputError
from .app import app, data_app, is_still_image, out_folder
from .kinds import load_for

TRAIN_HINT = "train one in minutes with `polymodal train configs/video_caption.yaml`"
BUNDLED = "shapes_video_captioner"  # src/polymodal/assets/: trained by configs/video_caption.yaml


IMAGE_INSTEAD = {  # command -> what to run on an image instead
    "describe": "caption it with `polymodal caption MODEL_DIR {path}`",
    "videoqa": 'ask about it with `polymodal vqa MODEL_DIR {path} "QUESTION"`',
}


def _require_video(path: Path, command: str) -> None:
    """A still image given as the video: say so, and which command takes images."""
    if is_still_image(path):
        raise InputError(f"{path}: is an image, and `polymodal {command}` takes a video file (mp4, mkv, webm, ...); "
                         + IMAGE_INSTEAD[command].format(path=path))


@data_app.command("shapes-video")
def data_shapes_video(out: Path = typer.Option(..., help="output folder"),
                      n: int = typer.Option(1200, help="clips in train + val + test"),
                      seed: int = typer.Option(0), size: int = typer.Option(64, help="frame size in pixels (even)"),
                      quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """Write Shapes World video: mp4 clips (H.264 + AAC sound) and annotations.json (captions, events, QA)."""
    from ..data.shapes_video import write_shapes_video

    if n < 3 or size < 16 or size % 2:
        raise InputError("--n must be at least 3 and --size an even number of at least 16")
    folder = write_shapes_video(out_folder(out), n=n, seed=seed, size=size, progress=not quiet)
    typer.echo(f"wrote Shapes World video to {folder} (annotations.json, videos/)")


def _frame_features(model_dir: Path | None) -> Any:
    from ..eval.keyframes import encoder_features, pixel_features

    if model_dir is None:
        return pixel_features, 64
    model = load_for("keyframes", model_dir)
    if "video" not in model.cfg.media.modalities:
        raise InputError(f"{model_dir}: this model has no frame encoder (audio only); leave out --model")
    return encoder_features(model.media.encoder, model.cfg.media.grid), model.cfg.media.image_size


@app.command()
def keyframes(video: Path = typer.Argument(..., help="video file"),
              k: int = typer.Option(5, "-k", "--k", help="how many key frames"),
              out: Path = typer.Option(..., help="folder for the PNGs, contact_sheet.png and keyframes.json"),
              model: Path | None = typer.Option(None, help="video captioner whose frame encoder scores the "
                                                "frames (default: pixel differences)"),
              fps: float | None = typer.Option(None, help="analyse this many frames per second (default: all)"),
              min_gap: int = typer.Option(2, help="fewest analysed frames between two key frames"),
              score: str = typer.Option("onset", help="onset (where a change starts) or change (how much)")) -> None:
    """Pick the k frames where the picture starts to change most; save them and a contact sheet."""
    from ..eval.keyframes import extract_keyframes, save_keyframes

    features, size = _frame_features(model)
    frames = extract_keyframes(video, k, features, size=size, analysis_fps=fps, min_gap=max(min_gap, 1),
                               score=score)
    written = save_keyframes(frames, out)
    for f in frames:
        typer.echo(f"{f.time:8.2f} s  frame {f.index:5d}  change {f.score:.3f}")
    typer.echo(f"wrote {len(written)} files to {out} (contact sheet: {out / 'contact_sheet.png'})")


@app.command()
def describe(video: Path = typer.Argument(..., help="video or sound file (mp4, mkv, webm, wav, ...)"),
             model: Path | None = typer.Option(None, help="video captioner directory (default: the bundled "
                                               f"Shapes World video captioner); {TRAIN_HINT}"),
             k: int = typer.Option(5, "-k", "--k", help="key frames to list"),
             out: Path | None = typer.Option(None, help="also save the key frames and a contact sheet here"),
             beam: int = typer.Option(3, help="beam size; 1 = greedy"),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Summarise a video (or a silent video, or a sound file): summary, timestamped events and key frames."""
    from ..eval.keyframes import encoder_features, extract_keyframes, pixel_features, save_keyframes
    from ..eval.ood import check_clip
    from ..models.video_captioner import load_clip

    if model is None:
        from ..assets import ASSETS

        model = ASSETS / BUNDLED
        if not (model / "config.json").is_file():
            raise InputError(f"{model}: bundled video captioner missing; pass --model DIR ({TRAIN_HINT})")
    _require_video(video, "describe")
    captioner = load_for("describe", model)
    clip = load_clip(video, captioner.cfg.media)
    result = captioner.describe_clip(clip, beam_size=max(beam, 1))
    result.update(check_clip(captioner, clip) or {})
    media = captioner.cfg.media
    features = encoder_features(captioner.media.encoder, media.grid) if "video" in media.modalities \
        else pixel_features
    frames = extract_keyframes(video, k, features, size=media.image_size) if "video" in result["modalities"] else []
    result["keyframes"] = [round(f.time, 2) for f in frames]
    if out is not None and frames:
        save_keyframes(frames, out)
    if as_json:
        result.pop("event_probs", None)
        typer.echo(json.dumps({"video": str(video), **result}))
        return
    warn_if_unlike_clip(result, video, model, "the description")
    typer.echo(f"read: {' + '.join(result['modalities'])}")
    typer.echo(f"summary: {result['summary']}")
    typer.echo("events:")
    for e in result["events"]:
        typer.echo(f"  {e['time']:6.2f} s  {e['event']}")
    if frames:
        typer.echo("key frames: " + ", ".join(f"{t:.2f} s" for t in result["keyframes"]))
    if out is not None and frames:
        typer.echo(f"key frames and contact sheet saved in {out}")


@app.command("videoqa")
def videoqa(model_dir: Path = typer.Argument(..., help="video QA model directory (or its run directory)"),
            video: Path = typer.Argument(..., help="video file"),
            question: str = typer.Argument(..., help='e.g. "what shape is heard off screen?"')) -> None:
    """Answer a question about a video (its frames and its sound)."""
    from ..eval.ood import check_clip
    from ..models.video_captioner import load_clip

    _require_video(video, "videoqa")
    model = load_for("videoqa", model_dir)
    clip = load_clip(video, model.cfg.media)
    answer = model.answer_clip(clip, question)
    warn_if_unlike_clip(check_clip(model, clip) or {}, video, model_dir, "the answer")
    typer.echo(answer)


def warn_if_unlike_clip(check: dict[str, Any], video: Path, model_dir: Path, guess: str) -> None:
    """One stderr line when a clip's modalities are unlike the model's training clips (eval/ood.py `check_clip`),
    or when the model has no statistics to check them with."""
    if "in_distribution" not in check:
        typer.echo(f"note: {model_dir} has no out-of-distribution statistics for these inputs (saved before them), "
                   f"so {video} was not checked against its training clips", err=True)
    elif not check["in_distribution"]:
        unlike = [m for m, c in check["by_modality"].items() if not c["in_distribution"]]
        typer.echo(f"warning: {video}: its {' and '.join(unlike)} is unlike the clips {model_dir} was trained on "
                   f"(out-of-distribution score {check['ood_score']:.1f} x the threshold); {guess} is a guess", err=True)
