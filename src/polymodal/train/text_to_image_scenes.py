"""The planning text -> image task: one LM learns to write scene plans after captions, a renderer to draw them.

    (caption, scene) pairs -> SceneImageGenerator: next-token loss on the plan (data/scene_plan.py)
                              + pixel loss on the renderer's drawing of the true plan   {out_dir}/model

Plans come from object annotations, so the data must have them: Shapes World (`data.format: shapes`, its
scenes.jsonl), or any captioned data (coco, karpathy, jsonl, csv) with a COCO instances file (`instances:`, the
boxes by image id, data/instances.py). Images without an annotated object are skipped and counted. The background
shades are fitted on the training images (the scenes' colours; other data: each image's mean colour).
Validation: both losses on validation pairs, with their captions.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config("configs/text_to_image.yaml", ["train.steps=20"])
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
from ..data.instances import read_instances
from ..data.records import CaptionRecord, SkipReport
from ..data.scene_plan import (
    BoxedObject,
    background_level,
    fit_levels,
    plan_of,
    plan_tokens,
    plan_words,
    shape_objects,
)
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
    instances: str | None = None  # a COCO instances file: the objects of non-Shapes-World data, by image id
    background_sample: int = 2000  # non-Shapes-World data: images whose mean colours fit the shades


@dataclass
class Annotated:
    """What a plan is made from, per record: its objects and its background colour (None: the image's mean)."""

    objects: list[BoxedObject]
    colour: tuple[float, ...] | None


def mean_colour(image: torch.Tensor) -> list[float]:
    """An image's (3, S, S) mean colour, 0-255: the background shade of data without scene colours."""
    return image.float().mean((1, 2)).tolist()


class PlannedCaptions(Dataset):
    """Every (caption, plan, image) triple as one item: {"tokens", "plan" (ids ending in <eos>), "scene_plan",
    "image"}, the plan naming the objects in the caption's order; records whose image failed are left out
    (counted by the image store)."""

    def __init__(self, records: list[CaptionRecord], annotated: list[Annotated], images: ImageDataset,
                 tokenizer: Tokenizer, max_len: int, cfg: SceneImageConfig):
        self.records, self.images, self.tokenizer, self.max_len, self.cfg = records, images, tokenizer, max_len, cfg
        self.objects = [[dataclasses.replace(o, phrase=o.phrase[: cfg.max_phrase]) for o in a.objects]
                        for a in annotated]
        self.shades = [None if a.colour is None else background_level(a.colour, cfg.background_levels)
                       for a in annotated]
        self.pairs = [(i, j) for i, rec in enumerate(records) for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        i, j = self.pairs[index]
        image = self.images[i]
        if image is None:
            return None
        tok, caption, shade = self.tokenizer, self.records[i].captions[j], self.shades[i]
        if shade is None:
            shade = background_level(mean_colour(image["image"]), self.cfg.background_levels)
        planned = plan_of(self.objects[i], shade, caption, self.cfg.grid, self.cfg.max_objects)
        plan = [tok.index.get(w, tok.unk_id) for w in plan_words(planned)]  # type: ignore[attr-defined]
        return {"tokens": torch.tensor([tok.bos_id, *tok.encode(caption, max_len=self.max_len), tok.eos_id]),
                "plan": torch.tensor([*plan, tok.eos_id]), "scene_plan": planned, "image": image["image"]}


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


def annotate(cfg: SceneImageExperimentConfig, report: SkipReport) -> dict[str, Any]:
    """Record id -> Annotated: a Shapes World scene's objects and colour, else the instances file's objects."""
    if cfg.data.format == "shapes":
        return {k: Annotated(shape_objects(scene), tuple(map(float, scene.background)))
                for k, scene in read_scenes(shapes_folder(cfg.data)).items()}
    return {k: Annotated(objects, None) for k, objects in read_instances(cfg.instances, report).items()}


def kept(records: list[CaptionRecord], annotations: dict[str, Any], report: SkipReport) -> list[CaptionRecord]:
    """The records with at least one annotated object; the others are skipped and counted."""
    out = []
    for r in records:
        if r.id in annotations and annotations[r.id].objects:
            out.append(r)
        else:
            report.skip("no object annotated (instances file)", f"image {r.id}")
    return out


def image_means(images: ImageDataset, sample: int) -> list[list[float]]:
    """The mean colours of about `sample` images spread over the dataset (those that load)."""
    step = max(len(images) // sample, 1)
    loaded = (images[i] for i in range(0, len(images), step))
    return [mean_colour(item["image"]) for item in loaded if item is not None] or [[40.0] * 3]


def train_text_to_image_scenes(cfg: SceneImageExperimentConfig, progress: bool = True,
                               stop_at: int | None = None) -> dict[str, Any]:
    """Train the planner and the renderer together; the generator lands in `{train.out_dir}/model`."""
    if cfg.data.format != "shapes" and not cfg.instances:
        raise ConfigError(f"text_to_image_scenes learns plans from object annotations: data.format={cfg.data.format} "
                          f"needs instances=FILE (COCO instances, the boxes by image id); for captions alone use "
                          f"configs/text_to_image_tokens.yaml")
    report = SkipReport(source="training data")
    with main_process_first():
        train_records = load_split(cfg.data, cfg.data.train_split, report)
        val_records = load_split(cfg.data, cfg.data.val_split, report)[: cfg.val_images]
        annotations = annotate(cfg, report)
    model_cfg = copy.deepcopy(cfg.model)
    train_records, val_records = (kept(records, annotations, report) for records in (train_records, val_records))
    size = model_cfg.image_size
    train_images, val_images = (ImageDataset(records, size, preload, report, progress)
                                for records, preload in ((train_records, cfg.data.preload), (val_records, True)))
    colours = [annotations[r.id].colour for r in train_records]
    model_cfg.background_levels = fit_levels(colours if all(colours) else image_means(train_images,
                                                                                       cfg.background_sample),
                                             cfg.backgrounds)
    words = WordTokenizer.build((c for r in train_records for c in r.captions), min_count=cfg.data.min_count,
                                max_size=cfg.data.max_vocab)
    # then the plan's tokens, and category words no caption used (a plan writes its objects' names as words)
    named = dict.fromkeys(w for r in train_records for o in annotations[r.id].objects for w in o.phrase)
    tokenizer = with_tokens(words, [*plan_tokens(model_cfg.grid, cfg.backgrounds), *named], "scene plans")
    max_len = min(cfg.data.max_len, model_cfg.text_max_len - 2)

    def planned(records: list[CaptionRecord], images: ImageDataset) -> PlannedCaptions:
        return PlannedCaptions(records, [annotations[r.id] for r in records], images, tokenizer, max_len, model_cfg)

    train_set, val_set = planned(train_records, train_images), planned(val_records, val_images)
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
