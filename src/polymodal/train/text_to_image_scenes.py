"""The planning text -> image task: one LM learns to write scene plans after captions, a renderer to draw them.

    (caption, scene) pairs -> SceneImageGenerator: next-token loss on the plan (data/scene_plan.py)
                              + pixel loss on the renderer's drawing of the true plan   {out_dir}/model

Plans come from scene annotations, so the data must have them: Shapes World (`data.format: shapes`, its
scenes.jsonl). The background shades are fitted on the training scenes. Validation: both losses on validation
pairs, with their captions.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config("configs/text_to_image_scenes.yaml", ["train.steps=20"])
    >>> cfg.model.grid, task.__name__
    (64, 'train_text_to_image_scenes')
    >>> summary = task(cfg)  # the model lands in runs/text_to_image_scenes/model  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import DataConfig, TrainConfig
from ..data.controlled_captions import read_scenes, with_tokens
from ..data.datasets import ImageDataset, load_split, shapes_folder
from ..data.records import CaptionRecord, SkipReport
from ..data.scene_plan import ScenePlan, fit_levels, plan_tokens, plan_words, scene_plan
from ..errors import ConfigError
from ..models.scene_image_generator import SceneImageConfig, SceneImageGenerator, plan_batch
from ..text.tokenizer import Tokenizer, WordTokenizer
from .distributed import main_process_first
from .trainer import Trainer


@dataclass
class SceneImageExperimentConfig:
    task: str = "text_to_image_scenes"
    seed: int = 0
    model: SceneImageConfig = field(default_factory=SceneImageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/text_to_image_scenes", lr=1e-3,
                                                                   grad_clip=1.0, early_stop_metric="val_loss"))
    val_images: int = 256        # validation pairs scored at each evaluation
    backgrounds: int = 8         # background shades the plan chooses among (fitted quantiles)


class PlannedCaptions(Dataset):
    """Every (caption, plan, image) triple as one item: {"tokens", "plan" (ids ending in <eos>), "scene_plan",
    "image"}; records whose image failed are left out (counted by the image store)."""

    def __init__(self, records: list[CaptionRecord], plans: list[ScenePlan], images: ImageDataset,
                 tokenizer: Tokenizer, max_len: int):
        self.records, self.plans, self.images, self.tokenizer, self.max_len = records, plans, images, tokenizer, max_len
        self.pairs = [(i, j) for i, rec in enumerate(records) for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        i, j = self.pairs[index]
        image = self.images[i]
        if image is None:
            return None
        tok = self.tokenizer
        plan = [tok.index[w] for w in plan_words(self.plans[i])]  # type: ignore[attr-defined]
        return {"tokens": torch.tensor([tok.bos_id, *tok.encode(self.records[i].captions[j], max_len=self.max_len),
                                        tok.eos_id]),
                "plan": torch.tensor([*plan, tok.eos_id]), "scene_plan": self.plans[i], "image": image["image"]}


def collate_planned(items: list[dict | None], tokenizer: Tokenizer, grid: int, max_phrase: int) -> dict[str, torch.Tensor]:
    good = [it for it in items if it is not None]
    batch: dict[str, torch.Tensor] = {"skipped": torch.tensor(len(items) - len(good))}
    if not good:
        return batch
    pad = tokenizer.pad_id
    batch.update(tokens=pad_sequence([it["tokens"] for it in good], batch_first=True, padding_value=pad),
                 plan=pad_sequence([it["plan"] for it in good], batch_first=True, padding_value=pad),
                 pixels=torch.stack([it["image"] for it in good]).float() / 127.5 - 1.0,
                 **plan_batch([it["scene_plan"] for it in good], tokenizer, grid, max_phrase))
    return batch


@torch.no_grad()
def plan_validation(model: SceneImageGenerator, dataset: PlannedCaptions, n_pairs: int,
                    batch_size: int = 64) -> dict[str, float]:
    """Both losses on the first `n_pairs` validation pairs, with their captions (none dropped)."""
    model.eval()
    cfg = model.cfg
    loader = DataLoader(torch.utils.data.Subset(dataset, range(min(n_pairs, len(dataset)))), batch_size=batch_size,
                        collate_fn=lambda items: collate_planned(items, model.tokenizer, cfg.grid, cfg.max_phrase))
    totals, count = {"loss": 0.0, "plan_loss": 0.0, "render_loss": 0.0}, 0
    for batch in loader:
        if "plan" not in batch:
            continue
        _, losses = model({k: v.to(model.device) for k, v in batch.items() if k != "skipped"})
        for key in totals:
            totals[key] += float(losses[key]) * len(batch["plan"])
        count += len(batch["plan"])
    model.train()
    return {key: value / max(count, 1) for key, value in totals.items()}


def train_text_to_image_scenes(cfg: SceneImageExperimentConfig, progress: bool = True,
                               stop_at: int | None = None) -> dict[str, Any]:
    """Train the planner and the renderer together; the generator lands in `{train.out_dir}/model`."""
    if cfg.data.format != "shapes":
        raise ConfigError(f"text_to_image_scenes learns plans from scene annotations (Shapes World); data.format="
                          f"{cfg.data.format} has none: use configs/text_to_image_tokens.yaml for captions alone")
    report = SkipReport(source="training data")
    with main_process_first():
        train_records = load_split(cfg.data, cfg.data.train_split, report)
        val_records = load_split(cfg.data, cfg.data.val_split, report)[: cfg.val_images]
        scenes = read_scenes(shapes_folder(cfg.data))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.background_levels = fit_levels([scenes[r.id].background for r in train_records], cfg.backgrounds)
    words = WordTokenizer.build((c for r in train_records for c in r.captions), min_count=cfg.data.min_count,
                                max_size=cfg.data.max_vocab)
    tokenizer = with_tokens(words, plan_tokens(model_cfg.grid, cfg.backgrounds), "scene plans")
    max_len = min(cfg.data.max_len, model_cfg.text_max_len - 2)
    size = model_cfg.image_size

    def planned(records: list[CaptionRecord], preload: bool) -> PlannedCaptions:
        plans = [scene_plan(scenes[r.id], model_cfg.background_levels, model_cfg.grid) for r in records]
        return PlannedCaptions(records, plans, ImageDataset(records, size, preload, report, progress), tokenizer,
                               max_len)

    train_set, val_set = planned(train_records, cfg.data.preload), planned(val_records, True)
    if report.count:
        tqdm.write(report.summary())
    torch.manual_seed(cfg.seed)
    model = SceneImageGenerator(model_cfg, tokenizer)
    trainer = Trainer(model, train_set, cfg.train,
                      collate=lambda items: collate_planned(items, tokenizer, model_cfg.grid, model_cfg.max_phrase),
                      save_model=model.write_files, seed=cfg.seed,
                      evaluate=lambda m: plan_validation(m, val_set, cfg.val_images, cfg.train.batch_size),
                      run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(vocab_size=len(tokenizer), train_pairs=len(train_set), skipped_records=report.count,
                   parameters=sum(p.numel() for p in model.parameters()))
    return summary


train_text_to_image_scenes.config_cls = SceneImageExperimentConfig  # type: ignore[attr-defined]
