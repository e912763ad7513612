"""The `chat` training task: an assistant that answers questions about an image, turn after turn.

config -> Shapes World dialogues -> Assistant -> generic Trainer -> turn-1 / follow-up accuracy. The
image side is the VQA task's: the same data config, region pretraining and feature bank.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config("configs/chat.yaml", ["train.steps=100"])  # doctest: +SKIP
    >>> task(cfg)["test"]["accuracy/follow-up"]  # trains for minutes  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import write_json
from ..config import TrainConfig
from ..data.dialogue import ChatDataset, build_chat_tokenizer, collate_chat, dialogue_report, read_dialogues
from ..data.records import SkipReport
from ..errors import ConfigError
from ..models.chat import Assistant, ChatModelConfig
from .pretraining import PretrainConfig, QADataConfig, build_bank, pretrain_region_encoder, shapes_dir
from .trainer import Trainer


@dataclass
class ChatExperimentConfig:
    task: str = "chat"
    seed: int = 0
    model: ChatModelConfig = field(default_factory=ChatModelConfig)
    data: QADataConfig = field(default_factory=QADataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/chat",
                                                                         early_stop_metric="val_accuracy"))


def prepare_chat(cfg: ChatExperimentConfig, progress: bool = True) -> tuple[Assistant, dict[str, ChatDataset]]:
    """Shapes World dialogues per split, the tokenizer, the assistant and a dataset per split."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.format != "shapes":
        raise ConfigError("the chat task trains on Shapes World dialogues; set data.format=shapes")
    folder = shapes_dir(cfg.data)
    names = list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split, *cfg.data.test_splits]))
    splits = {s: read_dialogues(folder, s, cfg.data.dialogues_per_image) for s in names}
    tokenizer = build_chat_tokenizer(splits[cfg.data.train_split], cfg.data.min_count, cfg.data.max_vocab)
    if cfg.pretrain.steps:
        cfg.model.encoder.pretrained = str(pretrain_region_encoder(cfg.model.encoder, cfg.model.image_size, cfg.data,
                                                                   cfg.pretrain, cfg.seed, progress))
    torch.manual_seed(cfg.seed)
    model = Assistant(cfg.model, tokenizer)
    report = SkipReport(source="dialogue images")
    bank = build_bank([d.image for ds in splits.values() for d in ds], cfg.model.encoder, model.encoder,
                      cfg.model.image_size, cfg.data, report, progress)
    if report.count:
        tqdm.write(report.summary())
    sets = {}
    for s, dialogues in splits.items():
        good, rows = bank.keep(dialogues)
        sets[s] = ChatDataset(good, rows, bank.__getitem__, tokenizer, cfg.model.context.max_len,
                              cfg.model.max_answer_len)
    return model, sets


@torch.inference_mode()
def evaluate_chat(model: Assistant, dataset: ChatDataset, batch_size: int = 256) -> dict[str, float]:
    """Greedy answers to every turn given the reference history; accuracy on turn 1 and on follow-ups."""
    preds: list[str] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_chat):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        regions = batch["image_features"] if "image_features" in batch else model.encoder(batch["images"])
        preds += model.generate_answers(regions, batch["tokens"])
    model.train()
    return dialogue_report([dataset.turn(i) for i in range(len(dataset))], preds)


def train_chat(cfg: ChatExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train the assistant on Shapes World dialogues; scores the best model on the test splits."""
    model, sets = prepare_chat(cfg, progress)
    val = sets[cfg.data.val_split]
    trainer = Trainer(model, sets[cfg.data.train_split], cfg.train, collate=collate_chat, save_model=model.write_files,
                      seed=cfg.seed, evaluate=lambda m: evaluate_chat(m, val), run_config=dataclasses.asdict(cfg),
                      progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_turns=len(sets[cfg.data.train_split]), vocab_size=len(model.tokenizer),
                   trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    if stop_at is not None and summary.get("stopped_at"):
        return summary
    best = Assistant.from_pretrained(Path(cfg.train.out_dir) / "model")
    for split in cfg.data.test_splits:
        summary[split] = evaluate_chat(best, sets[split])
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


train_chat.config_cls = ChatExperimentConfig  # type: ignore[attr-defined]
