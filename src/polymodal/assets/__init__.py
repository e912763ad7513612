"""Models shipped inside the package (trained on Shapes World; see README for the commands)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent
BUNDLED_CAPTIONER = "shapes_prefix_lm"  # the truest captioner (README "Are the captions true?"), 3.6 MB
ATTENTION_LSTM = "shapes_attention_lstm"  # the encoder-decoder captioner: ONNX export, refinement, word heatmaps


def bundled_model_dir(name: str = BUNDLED_CAPTIONER) -> Path:
    """Path of a bundled model directory; default the Shapes World captioner (a prefix LM + SCST).

    Example:
        >>> bundled_model_dir().name, bundled_model_dir(ATTENTION_LSTM).name
        ('shapes_prefix_lm', 'shapes_attention_lstm')
    """
    folder = ASSETS / name
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: bundled model missing; reinstall polymodal or train one with "
                              f"`polymodal train configs/prefix_lm.yaml`")
    return folder
