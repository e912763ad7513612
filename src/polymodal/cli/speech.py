"""`polymodal data shapes-speech`: spoken Shapes World (espeak-ng voices, noise, reverb; test voices held out).

Example:
    $ polymodal data shapes-speech --out shapes_speech --n 300
    $ OMP_NUM_THREADS=1 python bench/speech_baseline.py     # PocketSphinx WER on the held-out voices
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .app import data_app, out_folder


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
