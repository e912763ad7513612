"""How sure a chat reply is: its calibrated probability, and the "not sure" words below a threshold.

Every reply of a chat model (the instruction assistant, the old chat model) has a confidence: the probability
of the whole reply under the model (the product of its tokens' probabilities, <eos> included), with the logits
divided by a temperature fitted on validation conversations (`train.assistant.calibrate_assistant`; saved in
config.json's "calibration"). Below the saved threshold the reply says so and keeps its guess: "I am not sure;
my best guess is: red". docs/reliability.md measures it.

Example:
    >>> judge("red", 0.3, ReplyCalibration(threshold=0.5)).text
    'I am not sure; my best guess is: red'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..generate import StepFn, suppressing
from ..nn.state import State

NOT_SURE = "I am not sure; my best guess is: "


@dataclass
class ReplyCalibration:
    """How a reply's probability becomes its confidence, and when it is "not sure" (config.json "calibration")."""

    temperature: float = 1.0          # logits / T before the softmax (fitted on validation conversations)
    threshold: float | None = None    # a reply less confident than this says it is not sure; None = never
    method: str = "sequence"          # "sequence": product of the reply's token probabilities; "first": its first

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not 0 < float(self.temperature) < float("inf"):
            raise ConfigError(f"calibration.temperature must be a positive number (got {self.temperature!r}); "
                              f"remove the 'calibration' section to reply uncalibrated, or fit it again")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"calibration.threshold must lie in [0, 1] or be null (got {self.threshold!r})")
        if self.method not in ("sequence", "first"):
            raise ConfigError(f"calibration.method must be 'sequence' or 'first' (got {self.method!r})")


@dataclass
class ChatReply:
    """One reply: `text` as shown (with the not-sure words when unsure), the model's own `guess`, its
    calibrated `confidence` in [0, 1] and `not_sure` (None when the model has no threshold)."""

    text: str
    guess: str
    confidence: float | None = None
    not_sure: bool | None = None
    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # where it pointed, x y in [0, 1]


@dataclass
class ReplyScores:
    """The logits behind a batch of replies, one row per reply token (<eos> included): logits (M, V), the
    chosen ids (M,), the reply each row belongs to (M,), whether it is the reply's first token (M,)."""

    logits: torch.Tensor
    chosen: torch.Tensor
    reply: torch.Tensor
    first: torch.Tensor
    count: int

    def confidence(self, temperature: float = 1.0, method: str = "sequence") -> torch.Tensor:
        """(count,) probabilities of each reply ("sequence") or of its first token ("first") under logits / T.

        Example:
            >>> s = ReplyScores(torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]),
            ...                 torch.tensor([True, False, True]), 2)
            >>> s.confidence().tolist()  # two tokens at 1/4, one token at 1/4
            [0.0625, 0.25]
        """
        logp = (self.logits.double() / temperature).log_softmax(-1).gather(1, self.chosen[:, None]).squeeze(1)
        if method == "first":
            logp = torch.where(self.first, logp, torch.zeros_like(logp))
        total = torch.zeros(self.count, dtype=torch.float64, device=logp.device).index_add_(0, self.reply, logp)
        return total.exp().clamp(0.0, 1.0).cpu()

    @staticmethod
    def cat(parts: list[ReplyScores]) -> ReplyScores:
        """The scores of several batches as one, replies numbered in order."""
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + p.count)
        return ReplyScores(torch.cat([p.logits for p in parts]), torch.cat([p.chosen for p in parts]),
                           torch.cat([p.reply + o for p, o in zip(parts, offsets, strict=True)]),
                           torch.cat([p.first for p in parts]), sum(p.count for p in parts))


@torch.inference_mode()
def score_replies(step: StepFn, state: State, start_id: int, eos_id: int, replies: list[list[int]],
                  suppress_ids: tuple[int, ...] = ()) -> ReplyScores:
    """Teacher-force each reply (+ <eos>) through a decoder's `step` from `start_id` and keep the logits that
    chose each token, as `generate` saw them (`suppress_ids` at -inf). One state row per reply."""
    step = suppressing(step, sorted({start_id, *suppress_ids}))
    seqs = [list(r) + [eos_id] for r in replies]
    width = max(map(len, seqs))
    device = next(iter(state.values())).device
    ids = torch.tensor([s + [eos_id] * (width - len(s)) for s in seqs], device=device)  # (B, W)
    tokens = torch.full((len(seqs),), start_id, dtype=torch.long, device=device)
    logits = []
    for t in range(width):
        out, state, _ = step(tokens, state)
        logits.append(out.float())
        tokens = ids[:, t]
    keep = torch.arange(width, device=device)[None, :] < torch.tensor([len(s) for s in seqs], device=device)[:, None]
    rows = torch.arange(len(seqs), device=device)[:, None].expand(-1, width)
    first = torch.zeros_like(keep)
    first[:, 0] = True
    return ReplyScores(torch.stack(logits, 1)[keep].cpu(), ids[keep].cpu(), rows[keep].cpu(), first[keep].cpu(),
                       len(seqs))



def strip_not_sure(text: str) -> str:
    """A reply without the not-sure words, as the model said it (conversations sent back keep them).

    Example:
        >>> strip_not_sure(NOT_SURE + "red"), strip_not_sure("red")
        ('red', 'red')
    """
    return text[len(NOT_SURE):] if text.startswith(NOT_SURE) else text


def judge(guess: str, confidence: float, calibration: ReplyCalibration | None) -> ChatReply:
    """The reply shown for a guess with this confidence: below the threshold it says it is not sure.

    Example:
        >>> judge("red", 0.3, ReplyCalibration(threshold=0.5)).text
        'I am not sure; my best guess is: red'
        >>> judge("red", 0.3, None).not_sure is None
        True
    """
    threshold = calibration.threshold if calibration is not None else None
    unsure = None if threshold is None else confidence < threshold
    return ChatReply(NOT_SURE + guess if unsure else guess, guess, confidence, unsure)


def load_calibration(config: dict[str, Any], source: str = "config.json") -> ReplyCalibration | None:
    """The "calibration" section of a chat model's config.json; None when it was saved without one.

    Example:
        >>> load_calibration({"calibration": {"temperature": 2.0, "threshold": 0.4}}).threshold
        0.4
        >>> load_calibration({}) is None
        True
    """
    section = config.get("calibration")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise CheckpointError(f"{source}: 'calibration' must be a mapping (got {type(section).__name__}); remove it "
                              f"to reply uncalibrated, or fit it again")
    try:
        return from_dict(ReplyCalibration, section, f"{source}:calibration")
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None
