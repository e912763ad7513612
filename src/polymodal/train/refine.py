"""The refinement task: train a deliberation pass on top of a trained, frozen captioner.

    polymodal train configs/refine.yaml   (init_from: the first-pass model directory)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import load
from ..config import DataConfig, TrainConfig
from ..data.datasets import load_split
from ..data.records import SkipReport
from ..errors import ConfigError
from ..models.captioner import Captioner
from ..models.refine import RefinerConfig, RefiningCaptioner
from .captioning import fit_captioner


@dataclass
class RefineExperimentConfig:
    task: str = "refine"
    seed: int = 0
    init_from: str = ""               # the trained first-pass captioner (a model or run directory)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def train_refiner(cfg: RefineExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    if not cfg.init_from:
        raise ConfigError("refine: set init_from to the trained first-pass captioner's directory")
    first = load(cfg.init_from)
    if type(first) is not Captioner:
        raise ConfigError(f"{cfg.init_from}: refine needs a plain captioner as the first pass, "
                          f"got {first.architecture}")
    torch.manual_seed(cfg.seed)
    model = RefiningCaptioner.from_captioner(first, cfg.refiner)
    report = SkipReport(source="training data")
    train_records = load_split(cfg.data, cfg.data.train_split, report)
    return fit_captioner(model, cfg, train_records, report, progress, stop_at)


train_refiner.config_cls = RefineExperimentConfig  # type: ignore[attr-defined]
