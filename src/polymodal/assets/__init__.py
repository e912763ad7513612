"""Models shipped inside the package (trained on Shapes World; see README for the commands)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent
BUNDLED_CAPTIONER = "shapes_attention_lstm"


def bundled_model_dir(name: str = BUNDLED_CAPTIONER) -> Path:
    """Path of a bundled model directory, e.g. the Shapes World attention-LSTM captioner."""
    folder = ASSETS / name
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: bundled model missing; reinstall polymodal or train one with "
                              f"`polymodal train configs/attention_lstm.yaml`")
    return folder
