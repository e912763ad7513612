"""Task `assistant_rl`: self-critical training of an assistant's replies on a reward that checks them.

SCST (train/scst.py) on the requests of the instruction mixture instead of captions: K replies are sampled after
each request (its conversation up to it, as in training), each is rewarded 1 when its words are the reference reply
(eval.assistant.reply_correct) plus `rl.pointing_weight` when a reply that should point pointed at the right objects
(eval.assistant.pointed_right), and the greedy reply's reward is the baseline. Teacher forcing learns the reference
tokens one at a time; this trains what the model itself says, whole replies and their points together, which is
what "where is the purple circle?" gets wrong when it points at the wrong object. Validation keeps the model whose
greedy replies are right most often; its reply calibration is then refitted (train/assistant.py). On the default
assistant it moved validation accuracy by less than its noise (configs/assistant_rl.yaml, docs/assistant.md).

    polymodal train configs/assistant_rl.yaml init_from=runs/assistant_scst/model

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=assistant_rl", "init_from=runs/assistant/model"])
    >>> task is train_assistant_rl, cfg.train.early_stop_metric
    (True, 'reply_accuracy')
    >>> task(cfg)["best"]  # trains  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..api import load_expecting
from ..config import TrainConfig
from ..data.chat_template import markers
from ..data.datasets import collate_captions
from ..data.grounding import Point, location_grid
from ..data.qa import ImageBank
from ..data.records import SkipReport
from ..errors import ConfigError
from ..eval.assistant import Query, pointed_queries, pointed_right, pointing_report, reply_correct
from ..generate import GenerationConfig
from ..models.assistant import InstructionAssistant
from .assistant import (
    AssistantExperimentConfig,
    InstructionDataConfig,
    calibrate_and_save,
    conversations,
    mixture_queries,
    split_queries,
)
from .instruction_anchor import instruction_anchor
from .scst import ScstConfig, SelfCritical, keep_ood_stats
from .trainer import Trainer


@dataclass
class ReplyRLConfig:
    pointing_weight: float = 0.5      # reward for pointing right, beside 1 for the right words
    skip_kinds: list[str] = field(default_factory=lambda: ["describe"])  # captions have SCST on CIDEr-D
    eval_images: int = 100            # validation images whose requests are answered greedily at each check


@dataclass
class ReplyRLExperimentConfig:
    task: str = "assistant_rl"
    seed: int = 0
    init_from: str = ""               # the trained assistant (a model or run directory) to fine-tune
    scst: ScstConfig = field(default_factory=lambda: ScstConfig(num_samples=4))
    rl: ReplyRLConfig = field(default_factory=ReplyRLConfig)
    data: InstructionDataConfig = field(default_factory=InstructionDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/assistant_rl", lr=2e-5, warmup_steps=0, batch_size=16, steps=400, eval_every=100,
        early_stop_metric="reply_accuracy"))


class ReplyReward:
    """1 for a reply whose words are right, plus `pointing_weight` when it should point and pointed right.

    Example:
        >>> q = [Query("a.png", [], "position", "on the left", points=((0.2, 0.5),)), Query("a.png", [], "colour", "red")]
        >>> ReplyReward(q, grid=12)([("on the left", [(0.21, 0.5)]), ("blue", [])], [0, 1]).tolist()
        [1.5, 0.0]
    """

    def __init__(self, queries: list[Query], grid: int, pointing_weight: float = 0.5):
        self.queries, self.grid, self.pointing_weight = queries, grid, pointing_weight

    def __call__(self, replies: list[tuple[str, list[Point]]], indices: list[int]) -> torch.Tensor:
        out = []
        for (words, points), i in zip(replies, indices, strict=True):
            q = self.queries[i]
            pointing = self.pointing_weight * pointed_right(q.points, points, self.grid) if q.points and self.grid else 0
            out.append(float(reply_correct(q, words)) + pointing)
        return torch.tensor(out)


class SelfCriticalReplies(SelfCritical):
    """SCST on an assistant's replies to prompts; batch "tokens" holds each row's prompt ids (right-padded)."""

    def _prompts(self, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        pad = self.captioner.tokenizer.pad_id
        return [row[row != pad].tolist() for row in batch["tokens"]]

    def samples(self, batch: dict[str, torch.Tensor], cfg: GenerationConfig) -> list[list[int]]:
        replies = self.captioner.generate(batch["images"], cfg, prompts=self._prompts(batch))
        return [h.tokens for per_image in replies for h in per_image]

    def contexts(self, batch: dict[str, torch.Tensor]) -> list[list[int]]:
        assistant = markers(self.captioner.tokenizer)[1]  # a reply is generated after the prompt and this marker
        return [[*p, assistant] for p in self._prompts(batch)]

    def max_len(self, batch: dict[str, torch.Tensor]) -> int:
        return self.captioner.reply_room(max(map(len, self._prompts(batch))))

    @property
    def suppressed(self) -> list[int]:
        return sorted(set(self.captioner.never))  # a reply may point: only these are never said

    def describe(self, ids: list[int]) -> tuple[str, list[Point]]:
        return self.captioner.reply_parts(ids)


class _Requests(Dataset):
    """One item per request: its image (uint8), its prompt ids as "tokens", and its row as "record"."""

    def __init__(self, prompts: list[list[int]], rows: list[int], bank: ImageBank):
        self.prompts, self.rows, self.bank = prompts, rows, bank

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.bank[self.rows[i]], "record": i, "tokens": torch.tensor(self.prompts[i])}


def validation(model: InstructionAssistant, queries: list[Query], image: Any) -> dict[str, float]:
    """reply_accuracy: the share of right greedy replies; pointing: of pointing replies, those that pointed right."""
    replies, pointed, _ = pointed_queries(model, queries, image, progress=False)
    right = [reply_correct(q, words) for q, words in zip(queries, replies, strict=True)]
    pointing = pointing_report(queries, pointed, location_grid(model.tokenizer))
    return {"reply_accuracy": sum(right) / max(len(right), 1), "pointing": pointing.get("pointing/all", 0.0)}


def train_assistant_rl(cfg: ReplyRLExperimentConfig, progress: bool = True,
                       stop_at: int | None = None) -> dict[str, Any]:
    """Fine-tune the assistant in `init_from` on its own replies; the best model lands in `{out_dir}/model`."""
    if not cfg.init_from:
        raise ConfigError("assistant_rl: set init_from to a trained assistant (e.g. runs/assistant_continue/model)")
    model = load_expecting(cfg.init_from, InstructionAssistant.architecture, "train one with "
                           "`polymodal train configs/assistant.yaml`")
    report = SkipReport(source="instruction data")
    as_trained = AssistantExperimentConfig(model=model.cfg, data=cfg.data)  # where the assistant's data is read
    queries = [q for q in mixture_queries(conversations(cfg.data, cfg.data.train_split, report))
               if q.kind not in cfg.rl.skip_kinds]
    bank = ImageBank([q.image for q in queries], model.cfg.image_size, report=report, progress=progress)
    queries = [q for q in queries if q.image in bank.index]
    if not queries:
        raise ConfigError(f"assistant_rl: no requests in the {cfg.data.train_split!r} split to train on")
    train_set = _Requests([model.prompt_ids(q.messages) for q in queries], [bank.index[q.image] for q in queries], bank)
    val_queries, val_image = split_queries(as_trained, cfg.data.val_split, report, cfg.rl.eval_images)
    val_queries = [q for q in val_queries if q.kind not in cfg.rl.skip_kinds]
    torch.manual_seed(cfg.seed)
    reward = ReplyReward(queries, location_grid(model.tokenizer), cfg.rl.pointing_weight)
    anchor = instruction_anchor(model, cfg, report, progress) if cfg.scst.instruction_weight else None
    objective = SelfCriticalReplies(model, reward, cfg.scst, anchor)
    trainer = Trainer(objective, train_set, cfg.train, collate=functools.partial(collate_captions,
                                                                                pad_id=model.tokenizer.pad_id),
                      save_model=model.write_files, seed=cfg.seed, run_config=dataclasses.asdict(cfg),
                      evaluate=lambda _: validation(model, val_queries, val_image), progress=progress)
    summary = trainer.fit(stop_at=stop_at)
    summary.update(train_requests=len(queries), skipped_records=report.count)
    best = Path(cfg.train.out_dir) / "model"
    if stop_at is not None and summary.get("stopped_at") or not best.is_dir():
        return summary
    keep_ood_stats(model, best)
    trained = InstructionAssistant.from_pretrained(best).eval()
    summary["calibration"] = calibrate_and_save(trained, as_trained, best, report, progress)  # sharper replies
    return summary


train_assistant_rl.config_cls = ReplyRLExperimentConfig  # type: ignore[attr-defined]
