"""Which model kinds each command takes, and which command fits each kind: one table for the whole CLI.

A command loads its model with `load_for(command, dir)`. A model of another kind stops it before any weights
are read, with one line that names the directory and the command that does fit: a video captioner given to
`polymodal caption` points at `polymodal describe`.

Example:
    >>> from polymodal.assets import ASSETS
    >>> load_for("caption", ASSETS / "shapes_video_captioner")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    polymodal.errors.InputError: ...: is a video_captioner model, ...; for this model use `polymodal describe VIDEO ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPTIONERS = ("captioner", "refining_captioner", "prefix_lm")


@dataclass(frozen=True)
class Needs:
    """The model kinds (registry.MODELS names) a command takes, and the config in configs/ that trains one."""

    kinds: tuple[str, ...]
    config: str


NEEDS: dict[str, Needs] = {
    "caption": Needs(CAPTIONERS, "attention_lstm"),
    "evaluate": Needs(CAPTIONERS, "attention_lstm"),
    "export": Needs(("captioner",), "attention_lstm"),  # encoder + step decoder graphs: no second pass, no LM
    "vqa": Needs(("vqa", "spoken_vqa"), "vqa"),
    "chat": Needs(("assistant", "chat"), "assistant"),
    "describe": Needs(("video_captioner",), "video_caption"),
    "keyframes": Needs(("video_captioner",), "video_caption"),
    "videoqa": Needs(("video_qa",), "video_qa"),
    "index": Needs(("dual_encoder",), "contrastive"),
    "retrieve": Needs(("dual_encoder",), "contrastive"),
    "zeroshot": Needs(("dual_encoder",), "contrastive"),
    "retrieval-eval": Needs(("dual_encoder",), "contrastive"),
    "transcribe": Needs(("asr",), "asr"),
    "explain": Needs(("vqa", "video_qa", "dual_encoder", *CAPTIONERS), "vqa"),
    "generate": Needs(("text_to_image", "token_image_generator", "scene_image_generator"), "text_to_image"),
    "serve": Needs((*CAPTIONERS, "vqa", "chat", "assistant", "dual_encoder", "asr"), "attention_lstm"),
}

USE: dict[str, str] = {  # model kind -> the command that fits it ({dir}: the model directory)
    "asr": "polymodal transcribe {dir} AUDIO",
    "captioner": "polymodal caption {dir} IMAGE",
    "refining_captioner": "polymodal caption {dir} IMAGE",
    "prefix_lm": "polymodal caption {dir} IMAGE",
    "dual_encoder": "polymodal index {dir} IMAGES_DIR --out INDEX",
    "vqa": 'polymodal vqa {dir} IMAGE "QUESTION"',
    "spoken_vqa": "polymodal vqa {dir} IMAGE --audio QUESTION.wav",
    "chat": "polymodal chat {dir} IMAGE",
    "assistant": "polymodal chat {dir} IMAGE",
    "video_captioner": "polymodal describe VIDEO --model {dir}",
    "video_qa": 'polymodal videoqa {dir} VIDEO "QUESTION"',
    "text_to_image": 'polymodal generate {dir} "PROMPT"',
    "token_image_generator": 'polymodal generate {dir} "PROMPT"',
    "scene_image_generator": 'polymodal generate {dir} "PROMPT"',
    "image_tokenizer": "polymodal train configs/text_to_image_tokens.yaml image_tokenizer={dir}",  # a generator's stage 1
}


def _fix(command: str, model_dir: Path):
    """How to go on when `model_dir` holds a model of `kind`: the command for it, or training the right one."""
    train = f"train one for `polymodal {command}` with `polymodal train configs/{NEEDS[command].config}.yaml`"

    def fix(kind: str) -> str:
        use = USE.get(kind)
        return f"for this model use `{use.format(dir=model_dir)}`, or {train}" if use else train

    return fix


def check_for(command: str, model_dir: Path) -> str:
    """The kind of model in `model_dir` (reads config.json only); InputError if `command` does not take it."""
    from ..api import check_architecture

    return check_architecture(model_dir, NEEDS[command].kinds, _fix(command, model_dir))


def load_for(command: str, model_dir: Path) -> Any:
    """Load the model in `model_dir` for `command`, after checking it is a kind the command takes."""
    from ..api import load_expecting

    return load_expecting(model_dir, NEEDS[command].kinds, _fix(command, model_dir))
