"""Trained caption controls for the prefix LM and the encoder-decoder captioners: the config block, the training
set, and a start from a trained model.

    controls: {enabled: true, p_none: 0.5, kinds: [length, form, focus]}   (configs/prefix_lm_controls.yaml,
                                                                           configs/transformer_controls.yaml)

Each training pair gets, with chance 1 - p_none, one control prompt and the caption it asks for
(data/caption_controls.py); the model saves them (`prefix.controls`, a captioner's "controls") so that
`caption(length=...)` knows what it can do.

Example:
    >>> ControlsConfig(enabled=True, kinds=["length", "colour"]).check()
    Traceback (most recent call last):
    ...
    polymodal.errors.ConfigError: controls.kinds: unknown control 'colour'; use some of length, form, focus
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import DataConfig, ModelConfig
from ..data.caption_controls import GRID, KINDS
from ..data.controlled_captions import ControlledCaptionDataset, read_scenes, with_control_tokens
from ..data.datasets import shapes_folder
from ..errors import ConfigError
from ..text.tokenizer import Tokenizer


@dataclass
class ControlsConfig:
    enabled: bool = False             # off: the prefix LM trains exactly as before (no control tokens)
    p_none: float = 0.5               # share of examples with no control, so plain captioning stays as good
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    grid: int = GRID                  # focus points are given on a grid x grid raster
    marker: bool = True               # also mark the visual token under a focus point (prefix.focus_marker)
    weights: dict[str, float] = field(default_factory=dict)  # kind -> how often it is sampled (default 1)
    phrase_share: float = 0.4         # focus examples that name their object by a phrase (the rest: a click)

    def check(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ConfigError(f"controls.kinds: unknown control {unknown[0]!r}; use some of {', '.join(KINDS)}"
                              if unknown else f"controls.kinds is empty; use some of {', '.join(KINDS)}")
        if not 0.0 <= self.p_none < 1.0:
            raise ConfigError(f"controls.p_none must be in [0, 1), got {self.p_none}")
        if any(k not in self.kinds or w <= 0 for k, w in self.weights.items()):
            raise ConfigError(f"controls.weights {self.weights}: give a positive weight to kinds in {self.kinds}")
        if not 0.0 <= self.phrase_share <= 1.0:
            raise ConfigError(f"controls.phrase_share must be in [0, 1], got {self.phrase_share}")
        if not 2 <= self.grid <= 32:
            raise ConfigError(f"controls.grid must be between 2 and 32, got {self.grid}")


def trainable_kinds(controls: ControlsConfig, data: DataConfig) -> list[str]:
    """The controls the data can teach: all of them on Shapes World (scene annotations), only length elsewhere."""
    controls.check()
    if data.format == "shapes":
        return list(controls.kinds)
    dropped = [k for k in controls.kinds if k != "length"]
    if dropped:
        tqdm.write(f"controls: {', '.join(dropped)} need scene annotations (Shapes World); training length only")
    if "length" not in controls.kinds:
        raise ConfigError(f"controls.kinds {controls.kinds} cannot be trained on data.format={data.format}: "
                          f"only length can (from reference caption lengths)")
    return ["length"]


def control_wrapper(controls: ControlsConfig, data: DataConfig, kinds: list[str],
                    seed: int) -> Callable[[Any], ControlledCaptionDataset]:
    """fit_captioner's `wrap_train`: the caption pairs with a control prompt sampled per example."""
    scenes = read_scenes(shapes_folder(data)) if data.format == "shapes" else None
    weights = [controls.weights.get(k, 1.0) for k in kinds]
    return lambda base: ControlledCaptionDataset(base, kinds, controls.p_none, scenes, seed, controls.grid, weights,
                                                 controls.phrase_share)


def with_controls(controls: ControlsConfig, data: DataConfig, model_cfg: ModelConfig, tokenizer: Tokenizer,
                  seed: int) -> tuple[list[str], Tokenizer, Callable[[Any], ControlledCaptionDataset]]:
    """What training with controls changes, for any captioner: the kinds the data can teach, the tokenizer with
    the control tokens appended, and `fit_captioner`'s `wrap_train`; `model_cfg.decoder.max_len` is raised to
    `data.max_len` (a detailed caption of four objects is ~37 tokens)."""
    kinds = trainable_kinds(controls, data)
    model_cfg.decoder.max_len = max(model_cfg.decoder.max_len, data.max_len)
    return kinds, with_control_tokens(tokenizer, controls.grid), control_wrapper(controls, data, kinds, seed)


def _fits(old: torch.Size, new: torch.Size) -> bool:
    """The same shape, or more rows of the same width (a vocabulary with tokens appended)."""
    return old == new or (len(old) > 0 and len(old) == len(new) and old[1:] == new[1:] and new[0] >= old[0])


FRESH = ("focus_marker",)  # parameters a model may add when it goes on training (they start as a no-op)


def load_grown(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy a trained model's weights into `model`, whose vocabulary may be longer (control tokens appended):
    a tensor with more rows gets the old rows, the new ones keep their fresh init; a `FRESH` parameter the
    saved model lacks keeps its init. Returns tensors copied."""
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or not _fits(v.shape, own[k].shape)]
    missing = sorted(set(own) - set(state) - set(FRESH))
    if bad or missing:
        raise ConfigError(f"init_from: the saved model does not fit (e.g. {(bad or missing)[:3]}); "
                          f"use a prefix_lm model with the same sizes")
    with torch.no_grad():
        for key, value in state.items():
            if value.ndim:
                own[key][: value.shape[0]] = value
            else:
                own[key].copy_(value)
    model.load_state_dict(own)
    return len(state)
