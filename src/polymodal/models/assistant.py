"""The instruction-following assistant: the image-prefix LM answering a conversation in free text.

    [visual tokens] <user> q1 <assistant> a1 <eos> <user> q2  ->  <assistant> reply <eos>

One PrefixLM (models/prefix_lm.py) trained on the instruction mixture of data/instructions.py: it
describes, lists, counts, answers colour / shape / size / position / existence questions and follow-ups,
and declines what it cannot serve ("there is no star in the image", "i can only answer questions about
this image"). The conversation is the prompt the prefix LM already takes between image and decoding
start (chat_template.py); decoding is the shared `generate` over the KV cache, greedy by default.
`chat(image, messages)` serves `polymodal chat` and the server's chat endpoint, `answer(images, questions)`
the VQA one.

Every reply has a confidence: the probability of the whole reply under the model (the product of its
tokens' probabilities, <eos> included), with the logits divided by a temperature fitted on validation
conversations (`train.assistant.calibrate_assistant`; saved in config.json's "calibration"). Below the
saved threshold the reply says so and keeps its guess: "I am not sure; my best guess is: red".
`chat_reply` returns the reply with its confidence; a model saved without calibration reports the raw
probability (T = 1) and is never "not sure". docs/reliability.md measures it.

Example:
    >>> from PIL import Image
    >>> from polymodal.config import DecoderConfig, EncoderConfig
    >>> from polymodal.data.dialogue import DialogueRecord, Turn, build_chat_tokenizer
    >>> tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what colour is the star?", "red", "x")])])
    >>> cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
    ...                   decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, max_positions=32))
    >>> model = InstructionAssistant(cfg, tok, assistant=AssistantConfig(max_reply_len=8))  # untrained: any words
    >>> reply = model.chat(Image.new("RGB", (32, 32)), [{"role": "user", "content": "what colour is the star?"}])
    >>> isinstance(reply, str)
    True
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ModelConfig, from_dict
from ..data.chat_template import MAX_WORDS, markers, prompt
from ..data.dialogue import ASSISTANT, USER, Message
from ..data.grounding import split_locations
from ..data.images import images_to_batch
from ..data.instructions import DESCRIBE
from ..errors import CheckpointError, ConfigError, InputError
from ..generate import GenerationConfig, Hypothesis, StepFn, generate, suppressing
from ..nn.state import State
from ..text.tokenizer import Tokenizer
from .base import forget_initial_weights
from .captioner import ImageInput
from .prefix_lm import PrefixConfig, PrefixLM

log = logging.getLogger(__name__)


@dataclass
class AssistantConfig:
    max_reply_len: int = 28           # reply words at most (a caption of four objects is 21)
    max_message_words: int = MAX_WORDS  # a longer message keeps its first words
    loss_per: str = "token"           # "token": mean over reply tokens (a caption outweighs ten one-word answers);
                                      # "reply": each reply's tokens averaged first, then the replies


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


def reply_mean_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Cross-entropy averaged within each reply (a run of targets between <pad>s), then over the replies: a
    one-word answer weighs as much as a caption.

    Example:
        >>> import math
        >>> logits = torch.zeros(1, 4, 3)
        >>> logits[0, 0, 1] = 10.0  # the one-word reply is right (loss ~0), the two-word one uniform (log 3 each)
        >>> round(float(reply_mean_loss(logits, torch.tensor([[1, 0, 2, 2]]), pad_id=0)) / math.log(3), 3)  # not 2/3
        0.5
    """
    keep = targets != pad_id
    starts = keep & ~F.pad(keep[:, :-1], (1, 0), value=False)  # a reply begins where the targets resume
    reply = (starts.flatten().long().cumsum(0) - 1)[keep.flatten()]  # reply index of each kept token
    token_loss = F.cross_entropy(logits.flatten(0, 1)[keep.flatten()].float(), targets[keep], reduction="none")
    count = int(starts.sum())
    per_reply = torch.zeros(count, device=logits.device).index_add_(0, reply, token_loss)
    return (per_reply / torch.bincount(reply, minlength=count).clamp_min(1)).mean()


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


class InstructionAssistant(PrefixLM):
    """A PrefixLM that replies to conversations; see the module docstring."""

    architecture = "assistant"

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer, prefix: PrefixConfig | None = None,
                 assistant: AssistantConfig | None = None):
        if USER not in getattr(tokenizer, "index", {}) or ASSISTANT not in tokenizer.index:  # type: ignore[attr-defined]
            raise CheckpointError(f"the assistant's tokenizer needs the role markers {USER} and {ASSISTANT}; "
                                  f"build it with data.dialogue.build_chat_tokenizer")
        super().__init__(cfg, tokenizer, prefix)
        self.assistant_cfg = dataclasses.replace(assistant or AssistantConfig())
        if self.assistant_cfg.loss_per not in ("token", "reply"):
            raise ConfigError(f"assistant.loss_per must be 'token' or 'reply' (got {self.assistant_cfg.loss_per!r})")
        if self.cfg.decoder.max_positions < self.assistant_cfg.max_reply_len + 8:
            raise ConfigError(f"model.decoder.max_positions={self.cfg.decoder.max_positions} leaves no room for a "
                              f"question and a reply of {self.assistant_cfg.max_reply_len} words; raise it")
        self._trim_said = False
        self.calibration: ReplyCalibration | None = None  # set by train.assistant.calibrate_assistant
        user, assistant_id = markers(tokenizer)
        self.never = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.unk_id, user, assistant_id)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing over whole conversations; batch "targets" (B, L - 1) keeps only the replies' tokens
        (data.instructions.collate_instructions). Returns logits and {"reply_loss", "loss"}."""
        logits, losses = super().forward(batch)
        if self.assistant_cfg.loss_per == "reply":
            targets = batch.get("targets", batch["tokens"][:, 1:])
            loss = reply_mean_loss(logits, targets, self.tokenizer.pad_id)
            return logits, {"reply_loss": loss, "loss": loss}
        return logits, {"reply_loss": losses["loss"], "loss": losses["loss"]}

    # ---- replies -----------------------------------------------------------------------------
    @torch.inference_mode()
    def reply(self, images: torch.Tensor, prompts: list[list[int]], cfg: GenerationConfig | None = None) -> list[str]:
        """Replies for normalised images (B, 3, S, S) and prompt ids (one per image, `chat_template.prompt`)."""
        return [self.reply_text(ids) for ids in self.reply_ids(images, prompts, cfg)]

    def reply_text(self, ids: list[int]) -> str:
        """The words of a reply's ids, without the location tokens it pointed with (data/grounding.py)."""
        return self.tokenizer.decode(split_locations(self.tokenizer, ids)[0])

    @torch.inference_mode()
    def reply_ids(self, images: torch.Tensor, prompts: list[list[int]],
                  cfg: GenerationConfig | None = None) -> list[list[int]]:
        """The reply token ids (no markers, no <eos>) for normalised images and prompt ids."""
        return [h[0].tokens for h in self.generate(images, cfg or GenerationConfig(strategy="greedy"), prompts=prompts)]

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None, use_cache: bool = True,
                 prompts: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Replies (hypotheses best first, per image) to prompt ids (`prompt_ids`, one per image); without prompts
        the replies to "describe the image": so the Captioner API (`caption`, `caption_nbest`, SCST) reads an
        assistant's captions. Always decodes over the KV cache."""
        self.eval()
        describing = prompts is None
        prompts = [self.describe_prompt()] * len(images) if prompts is None else prompts
        room = self.cfg.decoder.max_positions - max(map(len, prompts))  # the reply's positions come after it
        cfg = cfg or GenerationConfig(strategy="greedy")
        cfg = dataclasses.replace(cfg, max_len=max(1, min(cfg.max_len, self.assistant_cfg.max_reply_len + 1, room)))
        return generate(self.step, self.init_state(images, prompts), markers(self.tokenizer)[1], self.tokenizer.eos_id,
                        cfg, suppress_ids=self.unsaid_ids if describing else self.never)

    # ---- the Captioner API: a caption is the reply to "describe the image" -------------------------
    def describe_prompt(self) -> list[int]:
        """The prompt ids of the request a caption answers."""
        return self.prompt_ids([{"role": "user", "content": DESCRIBE[0]}])

    def caption_context(self) -> list[int]:
        return [*self.describe_prompt(), markers(self.tokenizer)[1]]

    @property
    def caption_max_len(self) -> int:
        return max(1, min(self.assistant_cfg.max_reply_len + 1,
                          self.cfg.decoder.max_positions - len(self.describe_prompt())))

    @property
    def unsaid_ids(self) -> tuple[int, ...]:
        """What a caption never says: the role markers, <unk> and the location tokens too."""
        return tuple(sorted({*self.never, *super().unsaid_ids}))

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: list[list[int]], replies: list[list[int]]) -> ReplyScores:
        """The logits that chose each token of these replies (ids from `reply_ids`), for their confidence."""
        self.eval()
        room = self.cfg.decoder.max_positions - max(map(len, prompts)) - 1  # <eos> too must fit
        replies = [r[: max(room - 1, 0)] for r in replies]
        return score_replies(self.step, self.init_state(images, prompts), markers(self.tokenizer)[1],
                             self.tokenizer.eos_id, replies, self.never)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The prompt of a conversation, trimmed from its oldest turns to fit the positions (said once)."""
        budget = self.cfg.decoder.max_positions - self.assistant_cfg.max_reply_len - 1
        messages = [dict(m, content=strip_not_sure(m["content"])) if isinstance(m, dict)  # the guess, not our words
                    and m.get("role") == "assistant" and isinstance(m.get("content"), str) else m for m in messages]
        p = prompt(self.tokenizer, messages, budget, self.assistant_cfg.max_message_words)
        if (p.dropped or p.cut) and not self._trim_said:
            log.warning("conversation longer than the model's %d positions: the oldest %d messages are left out "
                        "(said once)", self.cfg.decoder.max_positions, p.dropped)
            self._trim_said = True
        return p.ids

    def chat(self, image: ImageInput, messages: list[Message], **generation: Any) -> str:
        """The reply to the last user message, given the whole conversation.

        Args:
            image: the image talked about (path, bytes, PIL image or normalised tensor); a new image mid-way
                is simply the one the next reply looks at.
            messages: [{"role": "user" | "assistant", "content": str}, ...], ending with the user's turn.
            generation: GenerationConfig fields, e.g. strategy="beam", beam_size=3 (default greedy).

        Raises:
            InputError: no messages, an empty message, an unknown role, or a last message not from the user.
        """
        return self.chat_reply(image, messages, **generation).text

    def chat_reply(self, image: ImageInput, messages: list[Message], **generation: Any) -> ChatReply:
        """As `chat`, with the reply's calibrated confidence and whether it is below the model's threshold.

        Example (an untrained model: any words, any confidence):
            >>> from PIL import Image
            >>> from polymodal.config import DecoderConfig, EncoderConfig
            >>> from polymodal.data.dialogue import DialogueRecord, Turn, build_chat_tokenizer
            >>> tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what colour?", "red", "x")])])
            >>> cfg = ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8),
            ...                   decoder=DecoderConfig(hidden_dim=32, num_layers=1, num_heads=4, max_positions=32))
            >>> model = InstructionAssistant(cfg, tok, assistant=AssistantConfig(max_reply_len=8))
            >>> model.calibration = ReplyCalibration(temperature=1.5, threshold=1.0)  # 1.0: never sure
            >>> r = model.chat_reply(Image.new("RGB", (32, 32)), [{"role": "user", "content": "what colour?"}])
            >>> 0.0 <= r.confidence <= 1.0, r.not_sure, r.text.startswith("I am not sure")
            (True, True, True)
        """
        ids = self.prompt_ids(messages)
        images = images_to_batch(image, self.cfg.image_size, self.device)
        reply = self.reply_ids(images, [ids], GenerationConfig(**{"strategy": "greedy", **generation}))
        cal = self.calibration or ReplyCalibration()
        confidence = float(self.score(images, [ids], reply).confidence(cal.temperature, cal.method)[0])
        said = judge(self.reply_text(reply[0]), confidence, self.calibration)
        said.points = split_locations(self.tokenizer, reply[0])[1]
        return said

    def answer(self, images: Any, questions: Any) -> list[str]:
        """The reply to each question, asked on its own (the VQA API); one image may take several questions.

        Raises:
            InputError: an empty question, or different numbers of images and questions.
        """
        questions = [questions] if isinstance(questions, str) else list(questions)
        images = images if isinstance(images, (list, tuple)) else [images] * len(questions)
        if len(images) != len(questions) or not questions:
            raise InputError(f"{len(images)} images for {len(questions)} questions; give one image per question, "
                             f"or one image for all")
        prompts = [self.prompt_ids([{"role": "user", "content": q}]) for q in questions]
        return self.reply(images_to_batch(list(images), self.cfg.image_size, self.device), prompts)

    # ---- saving ------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        out = {**super().config_dict(), "assistant": dataclasses.asdict(self.assistant_cfg)}
        if self.calibration is not None:  # older saves have none, and reply as before
            out["calibration"] = dataclasses.asdict(self.calibration)
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer,
                    source: str = "config.json") -> InstructionAssistant:
        cfg = from_dict(ModelConfig, config["model"], f"{source}:model")
        forget_initial_weights(cfg)
        model = cls(cfg, tokenizer, from_dict(PrefixConfig, config.get("prefix", {}), f"{source}:prefix"),
                    from_dict(AssistantConfig, config.get("assistant", {}), f"{source}:assistant"))
        model.calibration = load_calibration(config, source)
        return model


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
