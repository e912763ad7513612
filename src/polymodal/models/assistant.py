"""The instruction-following assistant: the image-prefix LM answering a conversation in free text.

    [visual tokens] <user> q1 <assistant> a1 <eos> <user> q2  ->  <assistant> reply <eos>

One PrefixLM (models/prefix_lm.py) trained on the instruction mixture of data/instructions.py: it
describes, lists, counts, answers colour / shape / size / position / existence questions and follow-ups,
and declines what it cannot serve ("there is no star in the image", "i can only answer questions about
this image"). The conversation is the prompt the prefix LM already takes between image and decoding
start (chat_template.py); decoding is the shared `generate` over the KV cache, greedy by default.
`chat(image, messages)` serves `polymodal chat` and the server's chat endpoint, `answer(images, questions)`
the VQA one.

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

from ..config import ModelConfig, from_dict
from ..data.chat_template import markers, prompt
from ..data.dialogue import ASSISTANT, USER, Message
from ..data.images import images_to_batch
from ..errors import CheckpointError, ConfigError, InputError
from ..generate import GenerationConfig, generate
from ..text.tokenizer import Tokenizer
from .base import forget_initial_weights
from .captioner import ImageInput
from .prefix_lm import PrefixConfig, PrefixLM

log = logging.getLogger(__name__)


@dataclass
class AssistantConfig:
    max_reply_len: int = 28           # reply words at most (a caption of four objects is 21)
    max_message_words: int = 48       # a longer message keeps its first words


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
        if self.cfg.decoder.max_positions < self.assistant_cfg.max_reply_len + 8:
            raise ConfigError(f"model.decoder.max_positions={self.cfg.decoder.max_positions} leaves no room for a "
                              f"question and a reply of {self.assistant_cfg.max_reply_len} words; raise it")
        self._trim_said = False
        user, assistant_id = markers(tokenizer)
        self.never = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.unk_id, user, assistant_id)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing over whole conversations; batch "targets" (B, L - 1) keeps only the replies' tokens
        (data.instructions.collate_instructions). Returns logits and {"reply_loss", "loss"}."""
        logits, losses = super().forward(batch)
        return logits, {"reply_loss": losses["loss"], "loss": losses["loss"]}

    # ---- replies -----------------------------------------------------------------------------
    @torch.inference_mode()
    def reply(self, images: torch.Tensor, prompts: list[list[int]], cfg: GenerationConfig | None = None) -> list[str]:
        """Replies for normalised images (B, 3, S, S) and prompt ids (one per image, `chat_template.prompt`)."""
        self.eval()
        room = self.cfg.decoder.max_positions - max(map(len, prompts))  # the reply's positions come after it
        cfg = cfg or GenerationConfig(strategy="greedy")
        cfg = dataclasses.replace(cfg, max_len=max(1, min(cfg.max_len, self.assistant_cfg.max_reply_len + 1, room)))
        state = self.init_state(images, prompts)
        hyps = generate(self.step, state, markers(self.tokenizer)[1], self.tokenizer.eos_id, cfg,
                        suppress_ids=self.never)
        return [self.tokenizer.decode(h[0].tokens) for h in hyps]

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The prompt of a conversation, trimmed from its oldest turns to fit the positions (said once)."""
        budget = self.cfg.decoder.max_positions - self.assistant_cfg.max_reply_len - 1
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
        ids = self.prompt_ids(messages)
        images = images_to_batch(image, self.cfg.image_size, self.device)
        return self.reply(images, [ids], GenerationConfig(**{"strategy": "greedy", **generation}))[0]

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
        return {**super().config_dict(), "assistant": dataclasses.asdict(self.assistant_cfg)}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer,
                    source: str = "config.json") -> InstructionAssistant:
        cfg = from_dict(ModelConfig, config["model"], f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer, from_dict(PrefixConfig, config.get("prefix", {}), f"{source}:prefix"),
                   from_dict(AssistantConfig, config.get("assistant", {}), f"{source}:assistant"))
