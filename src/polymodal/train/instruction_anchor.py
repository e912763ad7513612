"""The instruction loss beside SCST: an assistant's captions learn CIDEr-D while its other replies stay put.

SCST (train/scst.py) trains only an assistant's reply to "describe the image", but every reply shares the LM, and
on the default assistant it took some of what the other replies had learnt (held-out position 88.0 -> 86.2%,
docs/assistant.md). With `scst.instruction_weight > 0`, each SCST step also takes the assistant's teacher-forced
loss on a batch of its own instruction mixture (data/instructions.py, `scst.instructions`) and adds it, weighed:

    loss = scst_loss + instruction_weight * instruction_loss

the way InstructGPT mixes pretraining gradients into PPO ("PPO-ptx") so the fine-tuned policy keeps what it knew.

Tried at weight 1 on the one-stage assistant (configs/assistant_single.yaml): no effect beyond the noise of 500 images
per split (docs/assistant.md), so configs/assistant_scst.yaml leaves it at 0.

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> _, cfg = load_task_config("configs/assistant_scst.yaml", ["scst.instruction_weight=1"])
    >>> cfg.scst.instruction_weight, cfg.scst.instructions.conversations_per_image
    (1.0, 8)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data.grounding import location_grid
from ..data.instructions import InstructionDataset, collate_instructions
from ..data.records import SkipReport
from ..errors import ConfigError


class InstructionAnchor:
    """The model's teacher-forced reply loss on the next batch of `dataset`, reshuffled at the end of each pass.

    Example:
        >>> anchor = InstructionAnchor(model, dataset, batch_size=16)  # doctest: +SKIP
        >>> anchor(torch.device("cpu")).backward()  # doctest: +SKIP
    """

    def __init__(self, model: Any, dataset: InstructionDataset, batch_size: int, seed: int = 0):
        self.model = model
        pad = model.tokenizer.pad_id
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                                 generator=torch.Generator().manual_seed(seed),
                                 collate_fn=lambda items: collate_instructions(items, pad_id=pad))
        self._batches: Iterator[dict[str, torch.Tensor]] = iter(())

    def __call__(self, device: torch.device) -> torch.Tensor:
        batch = next(self._batches, None)
        if batch is None:  # a new pass, in a new order
            self._batches = iter(self.loader)
            batch = next(self._batches)
        _, losses = self.model({k: v.to(device) for k, v in batch.items()})
        return losses["loss"]


def instruction_anchor(model: Any, cfg: Any, report: SkipReport, progress: bool = True) -> InstructionAnchor:
    """The anchor of an SCST run (`cfg`: the config of task scst or assistant_rl) on the mixture of its training split,
    asked the way `model` (an InstructionAssistant) was trained: its tokenizer, its positions, its location grid."""
    import dataclasses

    from .assistant import InstructionDataConfig, conversations, instruction_sets

    if not hasattr(model, "prompt_ids"):
        raise ConfigError(f"scst.instruction_weight needs an assistant (task assistant); {cfg.init_from} is a "
                          f"{getattr(model, 'architecture', type(model).__name__)}: set scst.instruction_weight=0")
    instructions = dataclasses.replace(cfg.scst.instructions, location_grid=location_grid(model.tokenizer))
    fields = {f.name: getattr(cfg.data, f.name) for f in dataclasses.fields(cfg.data)  # shallow, unlike asdict
              if f.name in {g.name for g in dataclasses.fields(InstructionDataConfig)} - {"instructions"}}
    data = InstructionDataConfig(**fields, instructions=instructions)
    split = data.train_split
    dataset = instruction_sets(model, {split: conversations(data, split, report)}, report, progress)[split]
    if not len(dataset):
        raise ConfigError(f"scst.instruction_weight: no conversations in the {split!r} split to train on")
    return InstructionAnchor(model, dataset, cfg.scst.instruction_batch, cfg.seed)
