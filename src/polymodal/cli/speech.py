"""`polymodal data shapes-speech`, `polymodal transcribe` and `polymodal speak`: speech in and out.

Spoken Shapes World (espeak-ng voices, noise, reverb; test voices held out); the recognizer; text to speech
with espeak-ng. `hear` and `say` are the spoken question and reply of `polymodal vqa` and `polymodal chat`.

Example:
    $ polymodal data shapes-speech --out shapes_speech --n 300
    $ OMP_NUM_THREADS=1 python bench/speech_baseline.py     # PocketSphinx WER on the held-out voices
    $ polymodal train configs/asr.yaml && polymodal transcribe runs/asr/model question.wav
    $ polymodal speak "a large red circle" --out reply.wav
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import typer

from ..errors import InputError
from .app import app, data_app, out_folder, warn_if_unlike
from .kinds import load_for


@data_app.command("shapes-speech")
def data_shapes_speech(out: Path = typer.Option(..., help="output folder"),
                       n: int = typer.Option(300, help="utterances in train + val + test"),
                       seed: int = typer.Option(0),
                       quiet: bool = typer.Option(False, help="no progress bar")) -> None:
    """Write spoken Shapes World: 16 kHz wavs of its questions and captions, manifest.jsonl, and the images."""
    from ..data.speech import write_shapes_speech

    if n < 3:
        raise InputError("--n must be at least 3 (one utterance per split)")
    folder = write_shapes_speech(out_folder(out), n=n, seed=seed, progress=not quiet)
    typer.echo(f"wrote spoken Shapes World to {folder} (manifest.jsonl, audio/, world/)")


def check_speak(out: Path | None) -> None:
    """Before any work: InputError when a reply cannot be written to `out` (no espeak-ng, no such folder)."""
    from ..data.speech import INSTALL_HINT, espeak_available

    if out is None:
        return
    if not espeak_available():
        raise InputError(f"{out}: cannot speak the reply: espeak-ng not found on PATH; {INSTALL_HINT}")
    if out.is_dir() or not out.parent.is_dir():
        raise InputError(f"{out}: not a file in an existing folder; pass a .wav path to write the speech to")


def say(text: str, out: Path, voice: str = "en-us", speed: int = 160) -> Path:
    """Write `text` spoken by espeak-ng to the WAV file `out`, and say so on stderr."""
    from ..data.speech import espeak

    path = espeak(text, out, voice, speed)
    typer.echo(f"spoke {text!r} to {out}", err=True)
    return path


@functools.cache
def recognizer(asr: Path | None) -> Any:
    """The speech recognizer in `asr` (default: the bundled one), loaded once per command (a chat hears many turns)."""
    from ..assets import ASSETS, BUNDLED_ASR

    return load_for("transcribe", asr or ASSETS / BUNDLED_ASR)


def hear(audio: Path, asr: Path | None, max_seconds: float) -> str:
    """What is said in `audio`, by the recognizer in `asr` (default: the bundled one); InputError on silence."""
    from ..assets import BUNDLED_ASR
    from ..data.audio import load_audio
    from ..models.asr import SAMPLE_RATE

    model = recognizer(asr)
    wave = load_audio(audio, SAMPLE_RATE, max_seconds=max_seconds)  # decoded once: transcribed, then checked
    text = model.transcribe([wave], max_seconds=None)[0]
    if not text:
        raise InputError(f"{audio}: no speech heard (silence); record the question again, nearer the microphone")
    warn_if_unlike(model, asr or BUNDLED_ASR, [wave], [str(audio)], "the transcript", "recordings")
    return text


@app.command("speak")
def speak_command(text: str = typer.Argument(..., help='what to say, e.g. "a large red circle"'),
                  out: Path = typer.Option(..., "--out", help="the WAV file to write"),
                  voice: str = typer.Option("en-us", help="espeak-ng voice, e.g. en-gb+f2 (espeak-ng --voices=en)"),
                  speed: int = typer.Option(160, help="words per minute")) -> None:
    """Say a text with espeak-ng into a WAV file (the spoken replies of `polymodal vqa --speak`)."""
    if not text.strip():
        raise InputError("nothing to say: give a non-empty text")
    check_speak(out)
    say(text, out, voice, speed)


@app.command("transcribe")
def transcribe_command(model_dir: Path = typer.Argument(..., help="speech recognizer directory (or its run directory)"),
                       audio: list[Path] = typer.Argument(..., help="audio files (wav, flac, mp3, a video's sound)"),
                       beam: int = typer.Option(0, help="beam size; 1 = greedy, 0 = the model's own"),
                       max_seconds: float = typer.Option(60.0, help="longest audio accepted, in seconds (longer "
                                                         "files are refused before they are decoded)")) -> None:
    """Print what is said in each audio file, one line per file (every file is decoded before any line is printed).

    Silence prints an empty line.
    """
    from ..data.audio import load_audio
    from ..models.asr import SAMPLE_RATE

    model = load_for("transcribe", model_dir)
    # a missing, non-audio or too long file: one error line, nothing printed
    waves = [load_audio(path, SAMPLE_RATE, max_seconds=max_seconds) for path in audio]
    texts = model.transcribe(waves, beam_size=beam or None, max_seconds=None)
    heard = [i for i, text in enumerate(texts) if text]  # silence prints an empty line, no warning
    warn_if_unlike(model, model_dir, [waves[i] for i in heard], [str(audio[i]) for i in heard], "the transcript",
                   "recordings")
    for text in texts:
        typer.echo(text)
