"""`polymodal data shapes-speech` and `polymodal transcribe`: spoken Shapes World (espeak-ng voices, noise, reverb; test voices held out).

Example:
    $ polymodal data shapes-speech --out shapes_speech --n 300
    $ OMP_NUM_THREADS=1 python bench/speech_baseline.py     # PocketSphinx WER on the held-out voices
    $ polymodal train configs/asr.yaml && polymodal transcribe runs/asr/model question.wav
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .app import app, data_app, out_folder
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


@app.command("transcribe")
def transcribe_command(model_dir: Path = typer.Argument(..., help="speech recognizer directory (or its run directory)"),
                       audio: list[Path] = typer.Argument(..., help="audio files (wav, flac, mp3, a video's sound)"),
                       beam: int = typer.Option(0, help="beam size; 1 = greedy, 0 = the model's own")) -> None:
    """Print what is said in each audio file, one line per file (every file is decoded before any line is printed)."""
    from ..data.audio import load_audio

    model = load_for("transcribe", model_dir)
    waves = [load_audio(path, 16000) for path in audio]  # a missing or non-audio file: one error line, nothing printed
    for text in model.transcribe(waves, beam_size=beam or None):
        typer.echo(text)
