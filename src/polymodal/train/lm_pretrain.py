"""Task `lm_pretrain`: train the prefix LM's language model on captions alone, before any image.

The result is a `prefix_lm` model directory whose vision side is untrained; task `prefix_lm` with
`init_lm_from` then takes its LM (and its tokenizer) and connects the vision encoder:

    polymodal train configs/lm_pretrain.yaml     # text only  -> runs/lm_pretrain
    polymodal train configs/prefix_lm.yaml       # init_lm_from: runs/lm_pretrain

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=lm_pretrain", "train.steps=20"])  # or a YAML file
    >>> task is train_lm
    True
    >>> task(cfg)["best"]  # trains; the best validation loss (nats per token)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data.datasets import load_split
from ..data.records import CaptionRecord, SkipReport
from ..models.prefix_lm import PrefixConfig, PrefixLM
from ..text.tokenizer import Tokenizer, build_tokenizer
from .trainer import Trainer


@dataclass
class LMPretrainConfig:
    task: str = "lm_pretrain"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)      # decoder sizes + tokenizer kind matter here
    prefix: PrefixConfig = field(default_factory=PrefixConfig)  # saved along, for the later vision stage
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class CaptionTextDataset(Dataset):
    """Every reference caption as `<bos> tokens <eos>`; no images are read."""

    def __init__(self, records: list[CaptionRecord], tokenizer: Tokenizer, max_len: int):
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        self.items = [torch.tensor([bos, *tokenizer.encode(c, max_len=max_len), eos])
                      for rec in records for c in rec.captions]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.items[index]}


def collate_text(items: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into one (B, L) batch."""
    tokens = torch.nn.utils.rnn.pad_sequence([it["tokens"] for it in items], batch_first=True, padding_value=pad_id)
    return {"tokens": tokens}


@torch.inference_mode()
def text_validation(model: PrefixLM, dataset: CaptionTextDataset, batch_size: int, max_batches: int) -> dict:
    """Teacher-forced loss per token and perplexity on held-out captions."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_text)
    total, count = 0.0, 0
    for batch in itertools.islice(loader, max_batches or None):
        tokens = batch["tokens"].to(model.device)
        n = int((tokens[:, 1:] != model.tokenizer.pad_id).sum())
        total += float(model({"tokens": tokens})[1]["loss"]) * n
        count += n
    model.train()
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def train_lm(cfg: LMPretrainConfig, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train the LM of a prefix_lm model on the training captions; the model lands in `{out_dir}/model`."""
    report = SkipReport(source="training data")
    train_records = load_split(cfg.data, cfg.data.train_split, report)
    val_records = load_split(cfg.data, cfg.data.val_split, report)
    tokenizer = build_tokenizer(cfg.model.tokenizer, (c for r in train_records for c in r.captions),
                                cfg.data.min_count, cfg.data.max_vocab, cfg.model.bpe_vocab_size)
    torch.manual_seed(cfg.seed)
    model = PrefixLM(cfg.model, tokenizer, cfg.prefix)
    train_set = CaptionTextDataset(train_records, tokenizer, cfg.data.max_len)
    val_set = CaptionTextDataset(val_records, tokenizer, cfg.data.max_len)

    def evaluate(m: PrefixLM) -> dict[str, float]:
        return text_validation(m, val_set, cfg.train.batch_size, cfg.train.eval_batches)

    trainer = Trainer(model, train_set, cfg.train, collate=collate_text, save_model=model.write_files,
                      seed=cfg.seed, evaluate=evaluate, run_config=dataclasses.asdict(cfg), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(vocab_size=len(tokenizer), train_captions=len(train_set),
                   lm_parameters=sum(p.numel() for p in model.lm.parameters()))
    return summary


train_lm.config_cls = LMPretrainConfig  # type: ignore[attr-defined]
