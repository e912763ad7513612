"""Task `assistant`: train one instruction-following assistant on the instruction mixture.

config -> conversations (data/instructions.py: Shapes World scenes, or any caption dataset plus an
optional VQA question file) -> a word tokenizer with role markers -> InstructionAssistant (the image-prefix
LM) -> generic Trainer, loss on the assistant's replies only -> per-kind accuracy, follow-ups and declines
of the best model on the test splits (bench/assistant.py adds POPE, captions and the comparison).

    polymodal train configs/assistant.yaml

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=assistant", "train.steps=10"])
    >>> task is train_assistant, cfg.data.instructions.conversations_per_image
    (True, 4)
    >>> task(cfg)["heldout"]["accuracy/count"]  # trains  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import write_json
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.datasets import load_split, shapes_folder
from ..data.dialogue import DialogueRecord, build_chat_tokenizer, read_scenes
from ..data.instructions import (
    SCOPE,
    InstructionConfig,
    InstructionDataset,
    collate_instructions,
    conversations_from_captions,
    conversations_from_qa,
    conversations_from_scenes,
)
from ..data.qa import ImageBank, read_qa
from ..data.records import SkipReport
from ..eval.assistant import assistant_report
from ..eval.ood import save_model_stats
from ..models.assistant import AssistantConfig, InstructionAssistant
from ..models.prefix_lm import PrefixConfig
from ..text.tokenizer import WordTokenizer
from .prefix_lm import _pretrain_encoder
from .pretraining import PretrainConfig
from .trainer import Trainer


@dataclass
class InstructionDataConfig(DataConfig):
    qa_path: str | None = None        # a VQA JSON / JSONL file mixed in (non-Shapes data); Shapes World has its own
    test_splits: list[str] = field(default_factory=lambda: ["test", "heldout"])
    eval_images: int = 500            # test images scored per split at the end (0 = all)
    instructions: InstructionConfig = field(default_factory=InstructionConfig)


@dataclass
class AssistantExperimentConfig:
    task: str = "assistant"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    prefix: PrefixConfig = field(default_factory=lambda: PrefixConfig(pixel_shuffle=1))
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # steps > 0: start from a region encoder
    data: InstructionDataConfig = field(default_factory=InstructionDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/assistant"))


def split_captions(data: DataConfig, split: str, report: SkipReport) -> dict[str, list[str]]:
    """Image id -> reference captions of one split."""
    return {r.id: r.captions for r in load_split(data, split, report)}


def conversations(data: InstructionDataConfig, split: str, report: SkipReport) -> list[DialogueRecord]:
    """The mixture of one split: every kind on Shapes World; elsewhere describe + the VQA file's questions."""
    if data.format == "shapes":
        return conversations_from_scenes(shapes_folder(data), split, split_captions(data, split, report),
                                         data.instructions)
    out = conversations_from_captions(load_split(data, split, report))
    if data.qa_path:
        out += conversations_from_qa(read_qa(data.qa_path, images=data.images, split=split, report=report,
                                             allow_outside_root=data.allow_outside_root))
    return out


def mixture_tokenizer(convs: list[DialogueRecord]) -> WordTokenizer:
    """Words of every request and reply, and the role markers. Out-of-scope requests made of unknown words
    stay out, so they read as <unk>: what any word it never saw (another language, a typo) looks like."""
    known = [DialogueRecord(d.id, d.image, [t for t in d.turns if t.kind != "scope" or t.question in SCOPE], d.split)
             for d in convs]
    return build_chat_tokenizer(known)


@torch.inference_mode()
def masked_loss(model: InstructionAssistant, dataset: InstructionDataset, batch_size: int,
                max_batches: int) -> dict[str, float]:
    """Validation loss and next-token accuracy on the replies only."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_instructions)
    for batch in itertools.islice(loader, max_batches or None):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits, losses = model(batch)
        mask = batch["targets"] != model.tokenizer.pad_id
        n = int(mask.sum())
        total += float(losses["loss"]) * n
        correct += int(((logits.argmax(-1) == batch["targets"]) & mask).sum())
        count += n
    model.train()
    return {"loss": total / max(count, 1), "token_accuracy": correct / max(count, 1)}


def train_assistant(cfg: AssistantExperimentConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train the assistant as configured; the best model lands in `{train.out_dir}/model`."""
    report = SkipReport(source="instruction data")
    splits = {s: conversations(cfg.data, s, report) for s in (cfg.data.train_split, cfg.data.val_split)}
    tokenizer = mixture_tokenizer(splits[cfg.data.train_split])
    model_cfg = copy.deepcopy(cfg.model)
    _pretrain_encoder(cfg, model_cfg, progress)  # type: ignore[arg-type]  # reads pretrain, data, seed
    torch.manual_seed(cfg.seed)
    model = InstructionAssistant(model_cfg, tokenizer, cfg.prefix, cfg.assistant)
    bank = ImageBank([d.image for convs in splits.values() for d in convs], model_cfg.image_size, report=report,
                     progress=progress)
    if report.count:
        tqdm.write(report.summary())
    sets = {}
    for split, convs in splits.items():
        good, rows = bank.keep(convs)
        sets[split] = InstructionDataset(good, rows, bank.__getitem__, tokenizer, model_cfg.decoder.max_positions)
    val = sets[cfg.data.val_split]
    trainer = Trainer(model, sets[cfg.data.train_split], cfg.train, collate=collate_instructions,
                      save_model=model.write_files, seed=cfg.seed, run_config=dataclasses.asdict(cfg), progress=progress,
                      evaluate=lambda m: masked_loss(m, val, cfg.train.batch_size, cfg.train.eval_batches))
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_conversations=len(sets[cfg.data.train_split]), vocab_size=len(tokenizer),
                   parameters=sum(p.numel() for p in model.parameters()))
    best = Path(cfg.train.out_dir) / "model"
    if stop_at is not None and summary.get("stopped_at") or not best.is_dir():
        return summary
    trained = InstructionAssistant.from_pretrained(best).eval()
    summary["ood_threshold"] = save_model_stats(  # replies about an image unlike these say so
        trained, best, [d.image for d in splits[cfg.data.train_split]], [d.image for d in splits[cfg.data.val_split]])
    if cfg.data.format != "shapes":
        return summary
    summary.update(evaluate_splits(trained, cfg, report, progress))
    write_json(Path(cfg.train.out_dir) / "metrics.json", summary)
    return summary


def evaluate_splits(model: InstructionAssistant, cfg: AssistantExperimentConfig, report: SkipReport,
                    progress: bool = True) -> dict[str, Any]:
    """Per-kind accuracy, follow-ups, declines and captions of `model` on each test split (Shapes World)."""
    folder = shapes_folder(cfg.data)
    out = {}
    for split in cfg.data.test_splits:
        captions = split_captions(cfg.data, split, report)
        paths = [image for _, image, _ in read_scenes(folder, split)][: cfg.data.eval_images or None]
        bank = ImageBank(paths, model.cfg.image_size, report=report, progress=progress)
        out[split] = assistant_report(model, folder, split, captions, lambda path, bank=bank: bank[bank.index[path]],
                                      cfg.data.eval_images, progress=progress)
    return out


train_assistant.config_cls = AssistantExperimentConfig  # type: ignore[attr-defined]
