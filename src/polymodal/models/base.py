"""The save/load half that every polymodal model shares: a folder of config.json + tokenizer.json + model.safetensors.

A model mixes in `SavedModel`, names its `architecture` (the MODELS registry key) and the dataclass of its
config.json "model" section (`config_cls`), keeps that config in `self.cfg` and its tokenizer in
`self.tokenizer`. Models with more to save (an answer vocabulary, a second config section) extend
`config_dict` and `from_config`; everything else (atomic writes, weight loading, the errors) is here once.

Example:
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> from torch import nn
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> @dataclass
    ... class MyConfig:
    ...     width: int = 4
    >>> class MyModel(SavedModel, nn.Module):  # with @MODELS.register("my_model"), polymodal.load finds it
    ...     architecture, config_cls = "my_model", MyConfig
    ...     def __init__(self, cfg, tokenizer):
    ...         super().__init__()
    ...         self.cfg, self.tokenizer = cfg, tokenizer
    ...         self.proj = nn.Linear(cfg.width, len(tokenizer))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = MyModel(MyConfig(width=8), WordTokenizer.build(["a red circle"]))
    >>> folder = model.save_pretrained(f"{tmp.name}/model")
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'model.safetensors', 'tokenizer.json']
    >>> MyModel.from_pretrained(folder).proj
    Linear(in_features=8, out_features=7, bias=True)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_directory, load_weights, read_model_dir, resolve_model_dir, write_model_files
from ..config import EncoderConfig, from_dict
from ..errors import CheckpointError
from ..text.tokenizer import Tokenizer


def forget_initial_weights(cfg: Any) -> None:
    """Clear `pretrained` on every EncoderConfig inside `cfg`: the saved weights replace any initial ones."""
    if isinstance(cfg, EncoderConfig):
        cfg.pretrained = None
    elif dataclasses.is_dataclass(cfg):
        for f in dataclasses.fields(cfg):
            forget_initial_weights(getattr(cfg, f.name))


class SavedModel:
    """Mixin for nn.Module models saved as a model directory; see the module docstring."""

    architecture: str = ""
    config_cls: type = type(None)        # dataclass of config.json's "model" section
    needs_tokenizer: bool = True         # False where a tower brings its own (a Hugging Face text model)
    cfg: Any
    tokenizer: Tokenizer | None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]

    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "model": dataclasses.asdict(self.cfg)}

    def write_files(self, folder: Path) -> None:
        """Write config.json, tokenizer.json and model.safetensors into an existing folder."""
        write_model_files(Path(folder), self.config_dict(), self, self.tokenizer)  # type: ignore[arg-type]

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model directory atomically: a crash leaves the previous save, never half of one."""
        with atomic_directory(path) as tmp:
            self.write_files(tmp)
        return Path(path)

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None, source: str = "config.json") -> Any:
        """An untrained model from a saved config.json (`source` names it in errors; its folder holds the save)."""
        cfg = from_dict(cls.config_cls, config.get("model", {}), f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer)  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Any:
        """Rebuild a saved model: a model directory, or a training run directory (its `model/`)."""
        path = resolve_model_dir(path)
        config, tokenizer = read_model_dir(path)
        if tokenizer is None and cls.needs_tokenizer:
            raise CheckpointError(f"{path}: tokenizer.json missing; a {cls.architecture} model needs its vocabulary: "
                                  f"copy it from the same save, or re-train")
        with warnings.catch_warnings():  # no "random init" warning: the weights come next
            warnings.simplefilter("ignore")
            model = cls.from_config(config, tokenizer, f"{path}/config.json")
        load_weights(model, path)
        return model.eval()


class SavedAnswerModel(SavedModel):
    """A SavedModel that classifies into an answer vocabulary (VQA, video QA), saved in config.json's "answers"."""

    answers: list[str]

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "answers": self.answers}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None, source: str = "config.json") -> Any:
        answers = config.get("answers")
        if not isinstance(answers, list) or not answers:
            raise CheckpointError(f"{source}: a {cls.architecture} model needs its 'answers' list; copy config.json "
                                  f"from the same save, or re-train")
        cfg = from_dict(cls.config_cls, config.get("model", {}), f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer, [str(a) for a in answers])  # type: ignore[call-arg]
