"""`polymodal vqa`, `polymodal chat` and `polymodal ablate` commands (registered on the main app).

Example:
    $ polymodal vqa runs/vqa scene.png "what colour is the star?" --top
    $ polymodal vqa runs/vqa scene.png --audio question.wav --speak reply.wav   # spoken question and reply
    $ polymodal vqa runs/spoken_vqa scene.png --audio question.wav   # end-to-end: answered from the speech itself
    $ printf 'what is left of the square?\\nwhat size is it?\\n' | polymodal chat runs/chat scene.png
    $ polymodal ablate fusion --seeds 3 --steps 600 --out docs/fusion.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from ..errors import InputError, PolymodalError
from .app import app, warn_if_unlike
from .kinds import check_for, load_for
from .speech import check_speak, hear, say

QUIT = {"quit", "exit", ":q"}
SPOKEN = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".m4a"}  # with --voice, a line naming such a file is heard


@app.command("vqa")
def vqa_command(model_dir: Path = typer.Argument(..., help="VQA model directory (or its training run directory)"),
                image: Path = typer.Argument(..., help="image file"),
                question: str | None = typer.Argument(None, help='the question, e.g. "what colour is the circle?" '
                                                      "(or ask it aloud with --audio)"),
                audio: Path | None = typer.Option(None, "--audio", help="the question spoken, as an audio file "
                                                  "(wav, flac, mp3, ...): transcribed first, then answered; an "
                                                  "end-to-end spoken VQA model hears it directly"),
                asr: Path | None = typer.Option(None, "--asr", help="speech recognizer for --audio "
                                                "(default: the bundled one)"),
                speak: Path | None = typer.Option(None, "--speak", help="also write the answer as speech "
                                                  "(espeak-ng) to this WAV file"),
                max_seconds: float = typer.Option(60.0, help="longest --audio accepted, in seconds"),
                top: bool = typer.Option(False, "--top", help="print the most likely answers with probabilities"),
                k: int = typer.Option(3, help="how many answers --top prints")) -> None:
    """Answer a question about an image; below the model's confidence threshold the answer says it is not sure."""
    from ..data.images import load_image

    if (question is None) == (audio is None):
        raise InputError("ask one question: as text (an argument) or spoken (--audio FILE), not both or neither")
    check_speak(speak)
    end_to_end = check_for("vqa", model_dir) == "spoken_vqa"  # hears the question itself: no recognizer
    if end_to_end and audio is None:
        raise InputError(f"{model_dir}: is an end-to-end spoken VQA model, it answers spoken questions only; ask "
                         f"aloud with `polymodal vqa {model_dir} IMAGE --audio QUESTION.wav`, or use a text VQA model")
    model = load_for("vqa", model_dir)
    picture = load_image(image)
    if end_to_end:
        model.cfg.max_seconds = max_seconds
        answers = model.answer_topk(picture, str(audio), k=max(k, 1))[0]
        typer.echo("answered from the speech directly (end-to-end model, no recognizer or transcript)"
                   + (f"; --asr {asr} is not used" if asr is not None else ""))
    else:
        if audio is not None:
            question = hear(audio, asr, max_seconds)
            typer.echo(f"heard: {question}")
        answers = model.answer_topk(picture, question, k=max(k, 1))[0]  # calibrated probabilities, best first
    warn_if_unlike(model, model_dir, [picture], [str(image)], "the answer")
    best, prob = answers[0]
    sure = model.confident(prob)
    if top:
        for answer, p in answers:
            typer.echo(f"{answer}\t{p:.3f}")
    else:
        typer.echo(best if sure else f"not sure (p={prob:.2f}): {best}")
    if speak is not None:
        say(best if sure else f"I am not sure. Maybe {best}.", speak)


@app.command("chat")
def chat_command(model_dir: Path = typer.Argument(..., help="assistant model directory (or its run directory)"),
                 image: Path = typer.Argument(..., help="the image to talk about"),
                 beam: int = typer.Option(1, help="beam size; 1 = greedy"),
                 speak: Path | None = typer.Option(None, "--speak", help="also speak each reply (espeak-ng): "
                                                   "reply.wav writes reply-1.wav, reply-2.wav, ..."),
                 voice: bool = typer.Option(False, "--voice", help="spoken questions: a line naming an audio file "
                                            "(e.g. question.wav) is heard by the speech recognizer"),
                 asr: Path | None = typer.Option(None, "--asr", help="speech recognizer for --voice (default: the "
                                                 "bundled one)")) -> None:
    """Talk about an image: one question per line on stdin, until end of input or "quit".

    The conversation so far is kept, so follow-ups such as "and what colour is it?" work. With --voice, a
    line that names an audio file is a spoken question; with --speak, every reply is spoken too.
    """
    from ..data.images import load_image

    check_speak(speak)
    assistant = load_for("chat", model_dir)
    picture = load_image(image)
    warn_if_unlike(assistant, model_dir, [picture], [str(image)], "every reply")
    interactive = sys.stdin.isatty()
    generation = {"strategy": "beam", "beam_size": beam} if beam > 1 else {}
    messages: list[dict[str, str]] = []
    if interactive:
        typer.echo(f"Talking about {image}. Ask a question; 'quit' or Ctrl-D ends.", err=True)
    while True:
        if interactive:
            typer.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text.lower() in QUIT:
            break
        if voice and Path(text).suffix.lower() in SPOKEN and Path(text).is_file():
            try:
                text = hear(Path(text), asr, max_seconds=60.0)
            except PolymodalError as err:  # silence, not audio, too long: say so and listen again
                typer.echo(f"error: {err}", err=True)
                continue
            typer.echo(f"heard: {text}")
        messages.append({"role": "user", "content": text})
        try:
            said = chat_reply(assistant, picture, messages, generation)
        except InputError as err:  # a bad line should not end the conversation
            messages.pop()
            typer.echo(f"error: {err}", err=True)
            continue
        reply = said.text  # "I am not sure; my best guess is: ..." below the model's threshold
        messages.append({"role": "assistant", "content": said.guess})
        typer.echo(f"assistant: {reply}")
        if said.confidence is not None:  # on stderr: stdout stays the conversation
            typer.echo(f"confidence: p={said.confidence:.2f}" + (" (not sure)" if said.not_sure else ""), err=True)
        if said.points:  # where it pointed before answering, on stderr too
            typer.echo("pointed at: " + ", ".join(f"x={x:.2f} y={y:.2f}" for x, y in said.points), err=True)
        if speak is not None:
            turn = len(messages) // 2
            say(reply, speak.with_name(f"{speak.stem}-{turn}{speak.suffix or '.wav'}"))


def chat_reply(assistant: Any, image: Any, messages: list[dict[str, str]], generation: dict[str, Any]) -> Any:
    """The reply with its confidence (`chat_reply`), or, for a model without one, its `chat` text alone."""
    from ..models.reply_confidence import ChatReply

    if callable(getattr(assistant, "chat_reply", None)):
        return assistant.chat_reply(image, messages, **generation)
    text = assistant.chat(image, messages, **generation)
    return ChatReply(text, text)


@app.command()
def ablate(what: str = typer.Argument(..., help="what to ablate; only 'fusion' for now"),
           overrides: list[str] = typer.Argument(None, help="dotted overrides of the base config, "
                                                 "e.g. model.fusion.layers=1"),
           config: Path = typer.Option(Path("configs/vqa.yaml"), help="base VQA config"),
           seeds: int = typer.Option(3, help="seeds per variant"),
           steps: int = typer.Option(600, help="training steps per run (the same for every variant)"),
           variants: str | None = typer.Option(None, help="comma-separated fusion names (default: all)"),
           out: Path = typer.Option(Path("docs/fusion.md"), help="markdown report; a .png and .json go beside it"),
           threads: int = typer.Option(1, help="torch CPU threads per process; 1 is fastest on a busy machine"),
           workers: int = typer.Option(1, help="processes training runs in parallel (e.g. one per core)"),
           quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train every fusion variant with the same budget and seeds; write a table and a plot."""
    import torch

    from ..config import load_config
    from ..train.ablation import run_fusion_ablation, setup_record, write_report
    from ..train.vqa import VQAExperimentConfig

    if what != "fusion":
        raise InputError(f"cannot ablate {what!r}; the available ablation is 'fusion'")
    if seeds < 1 or steps < 1:
        raise InputError("--seeds and --steps must be at least 1")
    torch.set_num_threads(max(threads, 1))
    base = load_config(config, overrides or [], cls=VQAExperimentConfig)
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    started = time.time()
    results = run_fusion_ablation(base, names, seeds=seeds, steps=steps, progress=not quiet and workers <= 1,
                                  workers=workers, log=lambda msg: typer.echo(msg))
    command = " ".join(["polymodal ablate fusion", *(overrides or []), f"--seeds {seeds}", f"--steps {steps}",
                        *([f"--variants {variants}"] if variants else []), f"--workers {workers}", f"--out {out}"])
    write_report(results, out, setup_record(base, command, seeds, steps, (time.time() - started) / 60, workers))
    typer.echo(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.json')}")
