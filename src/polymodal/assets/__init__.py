"""Models shipped inside the package (trained on Shapes World; each folder's card.json says how and how well)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent
BUNDLED_CAPTIONER = "shapes_prefix_lm"  # the truest captioner (README "Are the captions true?"), 3.6 MB
ATTENTION_LSTM = "shapes_attention_lstm"  # the encoder-decoder captioner: ONNX export, refinement, word heatmaps
BUNDLED_VQA = "shapes_vqa"  # questions about an image, calibrated
BUNDLED_ASR = "shapes_asr"  # speech -> text (CTC), for spoken questions
BUNDLED_DUAL_ENCODER = "shapes_dual_encoder"  # text <-> image embeddings: search
BUNDLED_INDEX = "shapes_scenes_index"  # built-in test scenes (images inside) embedded by that dual encoder
BUNDLED_GENERATOR = "shapes_generator"  # text -> image: draws what a caption says
BUNDLED_ASSISTANT = "shapes_assistant"  # one assistant: answers, points, declines, describes (docs/assistant.md)
SERVED = (BUNDLED_CAPTIONER, BUNDLED_VQA, BUNDLED_ASR, BUNDLED_DUAL_ENCODER, BUNDLED_GENERATOR, BUNDLED_ASSISTANT)  # what `polymodal serve` loads given no model: one per capability of the page
CARD_FILE = "card.json"  # beside a model's weights: what it does, what it was trained on, its figures


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


def bundled_names() -> list[str]:
    """Every model folder shipped in the package, e.g. ['shapes_attention_lstm', 'shapes_prefix_lm', ...]."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


def read_card(folder: str | Path) -> dict[str, Any]:
    """A model folder's card.json ({} when it has none or it is unreadable: a card only describes).

    Example:
        >>> read_card(bundled_model_dir())["capability"]
        'caption'
    """
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def write_bundle(model_dir: str | Path, folder: str | Path, card: dict[str, Any], half: bool = True) -> Path:
    """Write a trained model as a bundle into `folder`: its files as saved (config, tokenizer, calibration and
    training statistics), the weights in float16 with `half` (half the size; they load back into float32) and
    `card` as card.json. The weights are the loaded model's (a generator's run holds more than it ships).
    `install_bundle` then puts it into the package.

    Example:
        >>> write_bundle("runs/assistant/model", "/tmp/shapes_assistant", {"capability": "chat"})  # doctest: +SKIP
        PosixPath('/tmp/shapes_assistant')
    """
    from ..api import load
    from ..checkpoint import WEIGHTS_FILE, resolve_model_dir, save_tensors

    source, folder = resolve_model_dir(model_dir), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in (WEIGHTS_FILE, CARD_FILE):
            shutil.copyfile(path, folder / path.name)
    weights = load(source).state_dict()
    save_tensors(folder / WEIGHTS_FILE, {k: v.half() if half and v.is_floating_point() else v
                                         for k, v in weights.items()})
    (folder / CARD_FILE).write_text(json.dumps({**card, **({"weights": "float16"} if half else {})}, indent=1)
                                    + "\n", encoding="utf-8")
    return folder


def install_bundle(folder: str | Path, name: str) -> Path:
    """Replace the bundled model `name` with the bundle in `folder` (written by `write_bundle`)."""
    target = ASSETS / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    return target
