"""The instruction-following assistant: the image-prefix LM answering a conversation in free text.

    [visual tokens] <user> q1 <assistant> a1 <eos> <user> q2  ->  <assistant> reply <eos>

One PrefixLM (models/prefix_lm.py) trained on the instruction mixture of data/instructions.py: it
describes, lists, counts, answers colour / shape / size / position / existence questions and follow-ups,
and declines what it cannot serve ("there is no star in the image", "i can only answer questions about
this image"). The conversation is the prompt the prefix LM already takes between image and decoding
start (chat_template.py); decoding is the shared `generate` over the KV cache, greedy by default.
`chat(image, messages)` serves `polymodal chat` and the server's chat endpoint, `answer(images, questions)`
the VQA one, and the Captioner API (`caption`, SCST) its replies to "describe the image".

Position, relation and count replies point first (data/grounding.py): trained with location tokens, the reply
writes the centres of the objects it is about, then its words; the text shown leaves them out and
`chat_reply(...).points` gives them.

Every reply has a calibrated confidence (models/reply_confidence.py): `chat_reply` returns the reply with it,
and below the saved threshold the reply says it is not sure; a model saved without calibration reports the raw
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
from torch import nn

from ..config import ModelConfig, from_dict
from ..data.chat_template import MAX_WORDS, markers, prompt
from ..data.dialogue import ASSISTANT, USER, Message
from ..data.grounding import Point, retry_id, split_locations
from ..data.images import images_to_batch
from ..data.instructions import DESCRIBE
from ..errors import CheckpointError, ConfigError, InputError
from ..generate import GenerationConfig, Hypothesis, generate
from ..text.tokenizer import Tokenizer, WordTokenizer
from .base import forget_initial_weights
from .captioner import ImageInput
from .prefix_lm import PrefixConfig, PrefixLM
from .reply_confidence import (
    ChatReply,
    ReplyCalibration,
    ReplyScores,
    judge,
    load_calibration,
    score_replies,
    strip_not_sure,
)

log = logging.getLogger(__name__)


@dataclass
class AssistantConfig:
    max_reply_len: int = 28           # reply words at most (a caption of four objects is 21)
    max_message_words: int = MAX_WORDS  # a longer message keeps its first words
    max_earlier_turns: int = 2        # earlier turns kept in the prompt, as many as the training conversations had
                                      # before their last (3 turns; raised by training on longer ones); 0 = all
                                      # that fit the positions
    loss_per: str = "token"           # "token": mean over reply tokens (a caption outweighs ten one-word answers);
                                      # "reply": each reply's tokens averaged first, then the replies
    retry: bool = True                # a model trained with <retry> may take a wrong point back (data/grounding.py);
                                      # false bans <retry>: every reply keeps its first points


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

    @property
    def never(self) -> tuple[int, ...]:
        """Ids a reply never holds: padding, <bos>, <unk>, the role markers, and <retry> where it is turned off."""
        tok, (user, assistant_id) = self.tokenizer, markers(self.tokenizer)
        retry = retry_id(tok) if not self.assistant_cfg.retry else None
        return (tok.pad_id, tok.bos_id, tok.unk_id, user, assistant_id, *(() if retry is None else (retry,)))

    def add_words(self, words: list[str]) -> None:
        """Append `words` the vocabulary lacks (e.g. data.grounding.RETRY, to train a model to take a point back):
        new rows of the tied embedding, drawn small as GPT-2 draws them; every other id keeps its embedding.

        Example:
            >>> from polymodal.data.grounding import RETRY
            >>> model.add_words([RETRY])  # doctest: +SKIP
        """
        new = [w for w in words if w not in self.tokenizer.index]  # type: ignore[attr-defined]
        if not new:
            return
        if self.prefix_cfg.lm is not None or not isinstance(self.tokenizer, WordTokenizer):
            raise ConfigError("new words can only be added to an assistant with its own word vocabulary (not a "
                              "Llama LM's)")
        old = self.lm.wte.weight
        self.tokenizer = WordTokenizer([*self.tokenizer.words, *new])
        self.lm.wte = nn.Embedding(len(self.tokenizer), old.shape[1], device=old.device, dtype=old.dtype)
        with torch.no_grad():
            self.lm.wte.weight[: len(old)] = old
            self.lm.wte.weight[len(old):].normal_(0.0, 0.02)
        self._register_token_lookups()  # token id -> cell tables, sized by the vocabulary

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
        return self.reply_parts(ids)[0]

    def reply_parts(self, ids: list[int]) -> tuple[str, list[Point]]:
        """A reply's words, and the points its location tokens name (data/grounding.py)."""
        words, points = split_locations(self.tokenizer, ids)
        return self.tokenizer.decode(words), points

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
        cfg = cfg or GenerationConfig(strategy="greedy")
        cfg = dataclasses.replace(cfg, max_len=min(cfg.max_len, self.reply_room(max(map(len, prompts)))))
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
        return self.reply_room(len(self.describe_prompt()))

    def reply_room(self, prompt_len: int) -> int:
        """The most tokens (<eos> included) a reply is generated with after a prompt of `prompt_len` ids: its
        positions come after the prompt's."""
        return max(1, min(self.assistant_cfg.max_reply_len + 1, self.cfg.decoder.max_positions - prompt_len))

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
        """The prompt of a conversation, trimmed from its oldest turns to fit the positions and the earlier turns the
        model was trained with (said once)."""
        budget = self.cfg.decoder.max_positions - self.assistant_cfg.max_reply_len - 1
        messages = [dict(m, content=strip_not_sure(m["content"])) if isinstance(m, dict)  # the guess, not our words
                    and m.get("role") == "assistant" and isinstance(m.get("content"), str) else m for m in messages]
        p = prompt(self.tokenizer, messages, budget, self.assistant_cfg.max_message_words,
                   self.assistant_cfg.max_earlier_turns)
        if (p.dropped or p.cut) and not self._trim_said:
            log.warning("conversation longer than the model's %d positions or %d earlier turns: the oldest %d "
                        "messages are left out (said once)", self.cfg.decoder.max_positions,
                        self.assistant_cfg.max_earlier_turns, p.dropped)
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
        text, points = self.reply_parts(reply[0])
        return dataclasses.replace(judge(text, confidence, self.calibration), points=points)

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
