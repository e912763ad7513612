"""The discrete text -> image task: (1) an image tokenizer, (2) a decoder-only LM that writes its codes after captions.

    stage 1  images -> ImageTokenizer (FSQ autoencoder), reconstruction loss       {out_dir}/image_tokenizer/model
    stage 2  every image -> its codes, once; (caption, codes) pairs -> TokenImageGenerator, next-code loss
                                                                                    {out_dir}/model

The same `data.*` keys as captioning (Shapes World by default; coco | karpathy | jsonl | csv). Stage 1 is
skipped when `image_tokenizer` names a trained tokenizer folder (one tokenizer can serve many LMs), and
resumes from its own checkpoint like any run. Validation: reconstruction MSE (stage 1) and the next-code
loss on validation pairs with their captions (stage 2).

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config("configs/text_to_image_tokens.yaml", ["train.steps=20"])
    >>> cfg.model.tokens, task.__name__
    (128, 'train_text_to_image_tokens')
    >>> summary = task(cfg)  # trains both stages; the model lands in runs/text_to_image_tokens/model  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..api import load_expecting
from ..config import DataConfig, TrainConfig
from ..data.controlled_captions import read_scenes, with_tokens
from ..data.datasets import ImageDataset, load_split, shapes_folder
from ..data.layout import GRID as LAYOUT_GRID
from ..data.layout import background_codes, box_words, layout_tokens, objects_box
from ..data.records import CaptionRecord, SkipReport
from ..data.shapes import Scene
from ..errors import ConfigError
from ..models.image_tokenizer import ImageTokenizer
from ..models.token_image_generator import TokenImageConfig, TokenImageGenerator
from ..registry import STREAMS
from ..text.tokenizer import Tokenizer, WordTokenizer
from .distributed import main_process_first
from .trainer import Trainer


@dataclass
class LayoutConfig:
    """Train with a layout box after the caption (data/layout.py): the box holding the scene's objects, on
    Shapes World (scene annotations), for `p_box` of the pairs; the rest keep the plain caption."""

    enabled: bool = False
    p_box: float = 0.5
    grid: int = LAYOUT_GRID
    keep_outside: bool = True   # fit the background codes, the only ones sampled outside a box (data/layout.py)
    background_min_count: int = 1   # a background code is seen in this many object-free training cells ...
    background_purity: float = 3.0  # ... and this many times as often as in cells an object reaches into

    def check(self, data: DataConfig) -> None:
        if not 0.0 < self.p_box <= 1.0:
            raise ConfigError(f"layout.p_box must be in (0, 1], got {self.p_box}")
        if not 2 <= self.grid <= 32:
            raise ConfigError(f"layout.grid must be between 2 and 32, got {self.grid}")
        if data.format != "shapes":
            raise ConfigError(f"layout boxes are learnt from scene annotations (Shapes World); data.format="
                              f"{data.format} has none: turn layout.enabled off")


@dataclass
class TokenImageExperimentConfig:
    task: str = "text_to_image_tokens"
    seed: int = 0
    model: TokenImageConfig = field(default_factory=TokenImageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    image_tokenizer: str | None = None   # a trained image tokenizer folder: skip stage 1
    # stage 1's run; its out_dir is always {train.out_dir}/image_tokenizer
    tokenizer_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1500, batch_size=32, lr=2e-3, warmup_steps=100, grad_clip=1.0, weight_decay=0.0,
        eval_every=500, checkpoint_every=500, early_stop_metric="val_mse"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/text_to_image_tokens", lr=1e-3,
                                                                   grad_clip=1.0, early_stop_metric="val_loss"))
    val_images: int = 256        # validation images (stage 1) and pairs (stage 2) scored at each evaluation
    init_from: str = ""          # a trained generator to go on from (its sizes; its vocabulary, grown by layout tokens)
    layout: LayoutConfig = field(default_factory=lambda: LayoutConfig())


def collate_images(items: list[dict | None]) -> dict[str, torch.Tensor]:
    """uint8 images -> pixels in [-1, 1]; failed items are dropped and counted."""
    good = [it for it in items if it is not None]
    batch: dict[str, torch.Tensor] = {"skipped": torch.tensor(len(items) - len(good))}
    if good:
        batch["pixels"] = torch.stack([it["image"] for it in good]).float() / 127.5 - 1.0
    return batch


class CodedCaptions(Dataset):
    """Every (caption, image tokens) pair as one item: {"tokens": <bos> words [box] <eos>, "codes": (T,)}; with
    `layouts` (per record, its box's token ids), a pair carries its box with chance `p_box`."""

    def __init__(self, records: list[CaptionRecord], codes: list[torch.Tensor | None], tokenizer: Tokenizer,
                 max_len: int, layouts: list[list[int]] | None = None, p_box: float = 0.0):
        self.records, self.codes, self.tokenizer, self.max_len = records, codes, tokenizer, max_len
        self.layouts, self.p_box = layouts, p_box
        self.pairs = [(i, j) for i, rec in enumerate(records) if codes[i] is not None
                      for j in range(len(rec.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, j = self.pairs[index]
        tok = self.tokenizer
        box = self.layouts[i] if self.layouts is not None and float(torch.rand(())) < self.p_box else []
        words = tok.encode(self.records[i].captions[j], max_len=self.max_len - len(box))
        return {"tokens": torch.tensor([tok.bos_id, *words, *box, tok.eos_id]), "codes": self.codes[i].long()}


def scene_layouts(scenes: dict[str, Scene], records: list[CaptionRecord], tokenizer: Tokenizer,
                  grid: int) -> list[list[int]]:
    """Each record's layout box (the one holding its scene's objects) as token ids."""
    return [[tokenizer.index[w] for w in box_words(objects_box(scenes[r.id].objects), grid)] for r in records]


def fit_outside_box_codes(scenes: dict[str, Scene], records: list[CaptionRecord], codes: list[torch.Tensor | None],
                          image_tokenizer: ImageTokenizer, layout: LayoutConfig) -> list[list[int]]:
    """The image codes that draw background (data/layout.py `background_codes`) in the training images' `codes`
    (of `records`; None where an image failed), judged by their scenes: what sampling keeps outside a box."""
    read = [(r, c) for r, c in zip(records, codes, strict=True) if c is not None]
    return background_codes(torch.stack([c.long() for _, c in read]), [scenes[r.id].objects for r, _ in read],
                            image_tokenizer.grid, image_tokenizer.cfg.codes_per_cell, image_tokenizer.vocab_size,
                            layout.background_min_count, layout.background_purity)


def grown_generator(start: TokenImageGenerator, tokenizer: WordTokenizer, cfg: TokenImageConfig) -> TokenImageGenerator:
    """A generator with `start`'s weights whose word vocabulary `tokenizer` extends start's (tokens appended):
    the new words' embeddings are inserted between the old words and the image codes, which keep theirs."""
    model = TokenImageGenerator(cfg, tokenizer)
    own, old_words = model.state_dict(), start.text_vocab
    if list(tokenizer.words[:old_words]) != list(start.tokenizer.words):
        raise ConfigError("init_from: the generator's vocabulary is not a prefix of the new one")
    with torch.no_grad():
        for key, value in start.state_dict().items():
            if key == "lm.wte.weight":
                own[key][:old_words] = value[:old_words]
                own[key][model.text_vocab:] = value[old_words:]
            elif key not in own or own[key].shape != value.shape:
                raise ConfigError(f"init_from: {key} does not fit; go on from a generator with the same sizes")
            else:
                own[key].copy_(value)
    model.load_state_dict(own)
    return model


def collate_coded(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    return {"tokens": pad_sequence([it["tokens"] for it in items], batch_first=True, padding_value=pad_id),
            "codes": torch.stack([it["codes"] for it in items]), "skipped": torch.tensor(0)}


@torch.no_grad()
def encode_images(tokenizer: ImageTokenizer, images: ImageDataset, batch_size: int = 128,
                  progress: bool = True) -> list[torch.Tensor | None]:
    """Each record's image tokens (T,) as int16; None where its image failed to load."""
    tokenizer.eval()
    codes: list[torch.Tensor | None] = [None] * len(images)
    for start in tqdm(range(0, len(images), batch_size), desc="image codes", disable=not progress, leave=False):
        loaded = [(i, images[i]) for i in range(start, min(start + batch_size, len(images)))]
        loaded = [(i, it) for i, it in loaded if it is not None]
        if not loaded:
            continue
        pixels = torch.stack([it["image"] for _, it in loaded]).float().to(tokenizer.device) / 127.5 - 1.0
        for (i, _), tokens in zip(loaded, tokenizer.encode(pixels).cpu(), strict=True):
            codes[i] = tokens.to(torch.int16)
    return codes


@torch.no_grad()
def reconstruction_mse(tokenizer: ImageTokenizer, pixels: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean squared error of encode -> decode on validation pixels (B, 3, S, S) in [-1, 1]."""
    tokenizer.eval()
    total = sum(float(((tokenizer.decode(tokenizer.encode(x)) - x) ** 2).sum())
                for x in pixels.to(tokenizer.device).split(batch_size))
    tokenizer.train()
    return {"mse": total / pixels.numel()}


def train_image_tokenizer(cfg: TokenImageExperimentConfig, train: ImageDataset, val_pixels: torch.Tensor,
                          progress: bool = True) -> ImageTokenizer:
    """Stage 1: the FSQ autoencoder, saved in {train.out_dir}/image_tokenizer/model; returns the best one."""
    run = dataclasses.replace(cfg.tokenizer_train, out_dir=str(Path(cfg.train.out_dir) / "image_tokenizer"))
    torch.manual_seed(cfg.seed)
    model = ImageTokenizer(cfg.model.image)
    trainer = Trainer(model, train, run, collate=collate_images, save_model=model.write_files, seed=cfg.seed,
                      evaluate=lambda m: reconstruction_mse(m, val_pixels),
                      run_config={"model": dataclasses.asdict(cfg.model.image), "data": dataclasses.asdict(cfg.data),
                                  "train": dataclasses.asdict(run)}, progress=progress)
    trainer.fit()
    return ImageTokenizer.from_pretrained(Path(run.out_dir) / "model")


def load_image_tokenizer(path: str, want: Any) -> ImageTokenizer:
    tokenizer = ImageTokenizer.from_pretrained(path)
    if dataclasses.asdict(tokenizer.cfg) != dataclasses.asdict(want):
        raise ConfigError(f"image_tokenizer={path}: its config {dataclasses.asdict(tokenizer.cfg)} differs from "
                          f"model.image {dataclasses.asdict(want)}; make them equal or leave image_tokenizer out")
    return tokenizer


@torch.no_grad()
def code_validation(model: TokenImageGenerator, dataset: CodedCaptions, n_pairs: int,
                    batch_size: int = 64) -> dict[str, float]:
    """The next-code loss on the first `n_pairs` validation pairs, with their captions (no dropping)."""
    model.eval()
    loader = DataLoader(torch.utils.data.Subset(dataset, range(min(n_pairs, len(dataset)))), batch_size=batch_size,
                        collate_fn=lambda items: collate_coded(items, model.tokenizer.pad_id))
    total, count = 0.0, 0
    for batch in loader:
        _, losses = model({k: v.to(model.device) for k, v in batch.items() if k != "skipped"})
        total, count = total + float(losses["loss"]) * len(batch["codes"]), count + len(batch["codes"])
    model.train()
    return {"loss": total / max(count, 1)}


def train_text_to_image_tokens(cfg: TokenImageExperimentConfig, progress: bool = True,
                               stop_at: int | None = None) -> dict[str, Any]:
    """Train both stages as configured; the generator lands in `{train.out_dir}/model`."""
    if cfg.data.format in STREAMS:
        raise ConfigError(f"text_to_image_tokens: data.format={cfg.data.format} is a stream; give an indexed "
                          "dataset (shapes, coco, karpathy, jsonl, csv)")
    report = SkipReport(source="training data")
    with main_process_first():
        train_records = load_split(cfg.data, cfg.data.train_split, report)
        val_records = load_split(cfg.data, cfg.data.val_split, report)[: cfg.val_images]
    size = cfg.model.image_size
    train_images = ImageDataset(train_records, size, cfg.data.preload, report, progress)
    val_images = ImageDataset(val_records, size, True, report, progress)
    val_pixels = collate_images([val_images[i] for i in range(len(val_images))]).get("pixels")
    if val_pixels is None:
        raise ConfigError(f"text_to_image_tokens: no validation image of split {cfg.data.val_split!r} could be read")

    start = load_expecting(cfg.init_from, TokenImageGenerator.architecture, "train one with `polymodal train "
                           "configs/text_to_image_tokens.yaml`, or leave init_from empty") if cfg.init_from else None
    if start is not None and not cfg.image_tokenizer:
        raise ConfigError("init_from: give image_tokenizer=DIR too, the image tokenizer the generator was trained "
                          "with (its codes are the generator's words)")
    model_cfg = copy.deepcopy(start.cfg if start is not None else cfg.model)
    image_tokenizer = (load_image_tokenizer(cfg.image_tokenizer, model_cfg.image) if cfg.image_tokenizer
                       else train_image_tokenizer(cfg, train_images, val_pixels, progress))
    tokenizer = start.tokenizer if start is not None else WordTokenizer.build(
        (c for r in train_records for c in r.captions), min_count=cfg.data.min_count, max_size=cfg.data.max_vocab)
    layouts, scenes = None, {}
    if cfg.layout.enabled:
        cfg.layout.check(cfg.data)
        tokenizer = with_tokens(tokenizer, layout_tokens(cfg.layout.grid), "layout boxes")
        model_cfg.layout_grid = cfg.layout.grid
        scenes = read_scenes(shapes_folder(cfg.data))  # read once: the boxes, then the background codes
        layouts = scene_layouts(scenes, train_records, tokenizer, cfg.layout.grid)
    max_len = min(cfg.data.max_len, model_cfg.text_max_len - 2)
    train_codes = encode_images(image_tokenizer, train_images, progress=progress)
    train_set = CodedCaptions(train_records, train_codes, tokenizer, max_len, layouts, cfg.layout.p_box)
    if cfg.layout.enabled and cfg.layout.keep_outside:
        model_cfg.outside_box_codes = fit_outside_box_codes(scenes, train_records, train_codes, image_tokenizer,
                                                            cfg.layout)
    val_set = CodedCaptions(val_records, encode_images(image_tokenizer, val_images, progress=progress),
                            tokenizer, max_len)  # plain captions: a val loss comparable with the plain model's
    if report.count:
        tqdm.write(report.summary())

    torch.manual_seed(cfg.seed)
    model = (grown_generator(start, tokenizer, model_cfg) if start is not None
             else TokenImageGenerator(model_cfg, tokenizer))
    model.image_tokenizer.load_state_dict({k: v for k, v in image_tokenizer.state_dict().items()
                                           if not k.startswith("encoder.")})
    model.image_tokenizer.requires_grad_(False).eval()
    trainer = Trainer(model, train_set, cfg.train, collate=lambda items: collate_coded(items, tokenizer.pad_id),
                      save_model=model.write_files, seed=cfg.seed,
                      evaluate=lambda m: code_validation(m, val_set, cfg.val_images, cfg.train.batch_size),
                      run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(vocab_size=len(tokenizer), train_pairs=len(train_set), skipped_records=report.count,
                   image_tokenizer_val_mse=reconstruction_mse(image_tokenizer, val_pixels)["mse"],
                   parameters=sum(p.numel() for p in model.lm.parameters()))
    return summary


train_text_to_image_tokens.config_cls = TokenImageExperimentConfig  # type: ignore[attr-defined]
