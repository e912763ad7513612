"""Encoder pretraining off Shapes World: a short warm-up on the dataset's own questions and answers.

Region pretraining (train/pretraining.py) needs Shapes World scenes. On any other question file a
frozen random CNN gives poor features (72 % on a simple outside set, docs/outside.md), so the VQA task
falls back to this: the image encoder, unfrozen, learns to answer the training questions through a
small, fast-learning probe (bag-of-words question, question-guided attention pooling over the regions,
their mean and a 2x2 layout, an MLP). The probe is thrown away; the encoder is saved, then frozen and its features
cached for the VQA model as usual. Like region pretraining, the result is cached, keyed by every setting that changes it.

Answering alone teaches the encoder to drop what most questions do not need: on the outside test bed it learnt to
ignore background brightness, and flat vs gradient backgrounds fell to chance (64 %). So the probe also reads the mean
colour of each image quarter back, linearly, from the pooled features of that quarter: a cheap term that keeps the
coarse image content for whatever the VQA model asks later (VQA test accuracy on background questions
64 % -> 100 %, overall 94.2 % -> 99.7 %, docs/outside.md).

`pretrain.kind` picks: "auto" (regions on Shapes World, answers elsewhere), "regions" or "answers".

Example:
    >>> choose_pretraining(PretrainConfig(steps=1500), "shapes"), choose_pretraining(PretrainConfig(steps=1500), "vqa")
    ('regions', 'answers')
    >>> choose_pretraining(PretrainConfig(steps=0), "vqa") is None
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import save_tensors
from ..config import EncoderConfig, TrainConfig
from ..data.datasets import cache_root
from ..data.qa import ImageBank, QADataset, QARecord, collate_qa
from ..errors import ConfigError
from ..models.vqa import grid_positions, soft_cross_entropy
from ..nn.encoders import build_encoder
from ..text.tokenizer import Tokenizer
from .pretraining import PretrainConfig, QADataConfig
from .trainer import Trainer

KINDS = ("auto", "regions", "answers")
PRETRAINING_NOTES = {  # what the log says about the choice
    "regions": "scene attributes of Shapes World regions ({steps} steps), then frozen and cached",
    "answers": "data.format is not shapes, so no region pretraining; instead the encoder is trained, unfrozen, "
               "to answer the training questions ({steps} steps, pretrain.kind=answers), then frozen and cached",
}


def choose_pretraining(pre: PretrainConfig, data_format: str) -> str | None:
    """Which encoder pretraining runs: "regions" (Shapes World scenes), "answers" (any QA data) or None."""
    if pre.kind not in KINDS:
        raise ConfigError(f"pretrain.kind={pre.kind!r}: use one of {', '.join(KINDS)}")
    if not pre.steps:
        return None
    if pre.kind == "auto":
        return "regions" if data_format == "shapes" else "answers"
    return pre.kind


class AnswerProbe(nn.Module):
    """Image encoder + a light answer head, for pretraining the encoder on question answering.

    Example:
        >>> probe = AnswerProbe(build_encoder(EncoderConfig(width=4)), vocab_size=10, num_answers=3, dim=16)
        >>> batch = {"images": torch.zeros(2, 3, 32, 32), "tokens": torch.tensor([[4, 5], [6, 0]]),
        ...          "targets": torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])}
        >>> logits, losses = probe(batch)
        >>> logits.shape, sorted(losses)
        (torch.Size([2, 3]), ['answer', 'colour', 'loss'])
    """

    def __init__(self, encoder: nn.Module, vocab_size: int, num_answers: int, dim: int = 128, glimpses: int = 4,
                 colour_weight: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.colour_weight = colour_weight
        self.colour = nn.Linear(encoder.out_dim, 3)  # a quarter's pooled features -> its mean RGB
        self.proj = nn.Sequential(nn.LayerNorm(encoder.out_dim), nn.Linear(encoder.out_dim, dim))
        self.position = nn.Linear(2 + 4 * 4, dim)  # grid_positions with 4 bands
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.glimpse = nn.Linear(dim, glimpses)
        # glimpses + mean + a 2x2 layout of the regions (what "where", gradients and directions need) + question
        self.head = nn.Sequential(nn.Linear((glimpses + 6) * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, num_answers))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.encoder(batch["images"])  # (B, N, C)
        regions = self.proj(feats)  # (B, N, D)
        regions = regions + self.position(grid_positions(regions.shape[1], regions.device).to(regions.dtype))
        q = self.words(batch["tokens"])  # (B, D)
        weights = self.glimpse(torch.tanh(regions + q[:, None])).softmax(dim=1)  # (B, N, G)
        pooled = torch.einsum("bng,bnd->bgd", weights, regions).flatten(1)  # (B, G * D)
        layout = _quarters(regions).flatten(1)  # (B, D * 4)
        logits = self.head(torch.cat([pooled, regions.mean(1), layout, q], dim=-1))
        colour = F.adaptive_avg_pool2d(batch["images"], 2).flatten(2).transpose(1, 2)  # (B, 4, 3)
        losses = {"answer": soft_cross_entropy(logits, batch["targets"]),
                  "colour": F.mse_loss(self.colour(_quarters(feats).transpose(1, 2)), colour)}
        losses["loss"] = losses["answer"] + self.colour_weight * losses["colour"]
        return logits, losses


def _quarters(regions: torch.Tensor) -> torch.Tensor:
    """(B, N, D) regions -> (B, D, 4): their means over the 2x2 quarters of the grid (what "where", gradients and
    directions need); regions that do not form a square grid are taken as one column."""
    n = regions.shape[1]
    side = math.isqrt(n)
    shape = (side, side) if side * side == n else (n, 1)  # a grid, or the regions in a column
    grid = regions.transpose(1, 2).reshape(len(regions), -1, *shape)  # (B, D, side, side)
    return F.adaptive_avg_pool2d(grid, 2).flatten(2)


def _data_key(data: QADataConfig) -> list:
    """What identifies the question file's content: its path, size and modification time."""
    path = Path(data.path or "")
    stat = path.stat() if path.is_file() else None
    return [str(path.resolve()), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0, data.images,
            data.train_split]


def pretrain_answer_encoder(enc_cfg: EncoderConfig, image_size: int, records: list[QARecord], tokenizer: Tokenizer,
                            answers: list[str], data: QADataConfig, pre: PretrainConfig, seed: int = 0,
                            progress: bool = True, max_len: int = 20) -> Path:
    """Pretrain `enc_cfg`'s encoder on the training questions of `data` (see the module docstring).

    Returns the encoder weight file (safetensors), for `model.encoder.pretrained`.
    """
    settings = {"encoder": dataclasses.asdict(enc_cfg), "image_size": image_size, "pretrain": dataclasses.asdict(pre),
                "data": _data_key(data), "questions": len(records), "answers": answers, "seed": seed, "version": 3}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root() / "answer-encoders" / f"{enc_cfg.name}-{key}"
    weights = folder / "model" / "encoder.safetensors"
    if weights.is_file():
        return weights
    torch.manual_seed(seed)
    encoder = build_encoder(dataclasses.replace(enc_cfg, freeze=False, fine_tune_last_n=-1, pretrained=None))
    bank = ImageBank([r.image for r in records], image_size, progress=progress)
    records, rows = bank.keep(records)
    dataset = QADataset(records, rows, bank.__getitem__, tokenizer, answers, max_len)
    probe = AnswerProbe(encoder, len(tokenizer), len(answers))
    train_cfg = TrainConfig(out_dir=str(folder), steps=pre.steps, batch_size=pre.batch_size, lr=pre.lr,
                            warmup_steps=min(50, pre.steps // 10), eval_every=0, checkpoint_every=0,
                            log_every=max(pre.steps // 10, 1))
    trainer = Trainer(probe, dataset, train_cfg, collate=collate_qa,
                      save_model=lambda f: save_tensors(Path(f) / "encoder.safetensors", encoder.state_dict()),
                      seed=seed, run_config=settings, progress=progress)
    trainer.fit(resume=False)
    return weights
