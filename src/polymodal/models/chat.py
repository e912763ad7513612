"""A generative, multi-turn assistant: answers free-form questions and follow-ups about an image.

image -> encoder regions -> + position -> regions (B, N, D)
dialogue so far (<user> q1 <assistant> a1 <user> q2 ...) -> BiLSTM -> context tokens (B, L, D)
context tokens attend to the regions (CrossAttentionBlock x L): each word is grounded in the image
memory = [grounded context; regions] -> attention LSTM decoder -> answer words

The decoder follows the project's step interface (`init_state`, `step` over a dict of batch-first
tensors), so the shared `generate` runs greedy or beam search over it. Follow-ups such as "what size
is it?" are answered by attending to the earlier turn that named "it", grounded in the image.
`chat_reply` adds the reply's confidence and "not sure" state, as the instruction assistant's
(models/assistant.py: product of the reply's token probabilities, temperature and threshold from
config.json's "calibration"; without that section: T = 1 and never "not sure").

Example:
    A trained assistant (`polymodal train configs/chat.yaml` writes runs/chat); replies are at most
    `max_answer_len` words:

    >>> ChatModelConfig().max_answer_len
    8
    >>> assistant = polymodal.load("runs/chat/model")  # doctest: +SKIP
    >>> assistant.chat("scene.png", [{"role": "user", "content": "what is left of the square?"},
    ...                              {"role": "assistant", "content": "a red circle"},
    ...                              {"role": "user", "content": "what size is it?"}])  # doctest: +SKIP
    'small'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from ..data.dialogue import ASSISTANT, USER, Message, context_ids
from ..data.images import images_to_batch
from ..errors import CheckpointError
from ..generate import GenerationConfig, generate
from ..nn.attention import AdditiveAttention
from ..nn.encoders import build_encoder
from ..nn.fusion.base import CrossAttentionBlock, pool
from ..nn.question import QuestionEncoderConfig
from ..nn.state import State
from ..registry import QUESTION_ENCODERS
from ..text.tokenizer import Tokenizer
from .base import SavedModel
from .reply_confidence import (
    ChatReply,
    ReplyCalibration,
    judge,
    load_calibration,
    score_replies,
    strip_not_sure,
)
from .vqa import ImageInput, RegionProjector


@dataclass
class ChatModelConfig:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(name="small_cnn", width=16))
    context: QuestionEncoderConfig = field(default_factory=lambda: QuestionEncoderConfig(max_len=48))
    image_size: int = 64
    dim: int = 128                    # width of regions and grounded context tokens
    grounding_layers: int = 2         # context -> image cross-attention blocks
    heads: int = 4
    embed_dim: int = 64               # decoder word embedding
    hidden_dim: int = 256             # decoder LSTM
    attention_dim: int = 128
    dropout: float = 0.1
    max_answer_len: int = 8           # answer words generated at most


class DialogueDecoder(nn.Module):
    """LSTM decoder with additive attention over a padded memory (grounded context + regions)."""

    def __init__(self, cfg: ChatModelConfig, vocab_size: int):
        super().__init__()
        self.attention = AdditiveAttention(cfg.dim, cfg.hidden_dim, cfg.attention_dim)
        self.init = nn.Linear(2 * cfg.dim, 2 * cfg.hidden_dim)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(cfg.embed_dim + cfg.dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim + cfg.dim, vocab_size)

    def init_state(self, memory: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> State:
        h, c = torch.tanh(self.init(summary)).chunk(2, dim=-1)
        return {"memory": memory, "keys": self.attention.feature_proj(memory), "mask": mask, "h": h, "c": c}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        context, alpha = self.attention(state["memory"], state["h"], state["keys"], state["mask"])
        h, c = self.cell(torch.cat([self.embed(tokens), context], dim=-1), (state["h"], state["c"]))
        logits = self.out(self.dropout(torch.cat([h, context], dim=-1)))  # deep output: the word read counts
        return logits, dict(state, h=h, c=c), alpha


class Assistant(SavedModel, nn.Module):
    """Image + dialogue history -> a generated answer. See the module docstring."""

    architecture, config_cls = "chat", ChatModelConfig

    def __init__(self, cfg: ChatModelConfig, tokenizer: Tokenizer):
        super().__init__()
        if USER not in getattr(tokenizer, "index", {}) or ASSISTANT not in tokenizer.index:  # type: ignore[attr-defined]
            raise CheckpointError(f"the chat tokenizer needs the role markers {USER} and {ASSISTANT}")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.encoder = build_encoder(cfg.encoder)
        self.image_proj = RegionProjector(self.encoder.out_dim, cfg.dim)
        self.context = QUESTION_ENCODERS.build(cfg.context.name, cfg.context, len(tokenizer))
        self.context_proj = nn.Linear(self.context.out_dim, cfg.dim)
        self.grounding = nn.ModuleList([CrossAttentionBlock(cfg.dim, cfg.heads, cfg.dropout)
                                        for _ in range(cfg.grounding_layers)])
        self.decoder = DialogueDecoder(cfg, len(tokenizer))
        self.never = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.index[USER], tokenizer.index[ASSISTANT])  # type: ignore[attr-defined]
        self.calibration: ReplyCalibration | None = None  # config.json's "calibration", when saved with one

    def init_state(self, regions: torch.Tensor, tokens: torch.Tensor) -> State:
        """Raw encoder regions (B, N, C) and context ids (B, L) -> the decoder's initial state."""
        image = self.image_proj(regions)  # (B, N, D)
        ctx, mask = self.context(tokens)
        ctx = self.context_proj(ctx)  # (B, L, D)
        full = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
        for block in self.grounding:
            ctx, _ = block(ctx, image, full, mask)
        last = mask.long().sum(1).clamp_min(1) - 1  # the end of the newest question
        summary = torch.cat([ctx[torch.arange(len(ctx), device=ctx.device), last], pool(ctx, mask)], dim=-1)
        return self.decoder.init_state(torch.cat([ctx, image], dim=1), torch.cat([mask, full], dim=1), summary)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. batch: "images" or "image_features", "tokens" (B, L) context ids,
        "answer_tokens" (B, A) = <bos> words <eos> <pad>... Returns logits (B, A-1, V) and losses."""
        regions = batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])
        state = self.init_state(regions, batch["tokens"])
        answer = batch["answer_tokens"]
        logits = []
        for t in range(answer.shape[1] - 1):
            step_logits, state, _ = self.decoder.step(answer[:, t], state)
            logits.append(step_logits)
        out = torch.stack(logits, dim=1)  # (B, A-1, V)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), answer[:, 1:].reshape(-1),
                               ignore_index=self.tokenizer.pad_id)
        return out, {"answer_loss": loss, "loss": loss}

    @torch.inference_mode()
    def generate_answers(self, regions: torch.Tensor, tokens: torch.Tensor,
                         cfg: GenerationConfig | None = None) -> list[str]:
        """Answers for a batch of raw encoder regions (B, N, C) and context ids (B, L)."""
        return [self.tokenizer.decode(ids) for ids in self.answer_ids(regions, tokens, cfg)]

    @torch.inference_mode()
    def answer_ids(self, regions: torch.Tensor, tokens: torch.Tensor,
                   cfg: GenerationConfig | None = None) -> list[list[int]]:
        """The answers' token ids (no <bos>/<eos>) for raw encoder regions (B, N, C) and context ids (B, L)."""
        self.eval()
        cfg = cfg or GenerationConfig(strategy="greedy", max_len=self.cfg.max_answer_len + 1)
        hyps = generate(self.decoder.step, self.init_state(regions, tokens), self.tokenizer.bos_id,
                        self.tokenizer.eos_id, cfg, suppress_ids=self.never)
        # max_len leaves room for <eos>; a model that never says it still answers max_answer_len words at most
        return [h[0].tokens[: self.cfg.max_answer_len] for h in hyps]

    def chat(self, image: ImageInput, messages: list[Message], **generation: Any) -> str:
        """The assistant's reply to the last user message, given the whole conversation.

        Args:
            image: the image the conversation is about (path, bytes, PIL image or normalised tensor).
            messages: [{"role": "user" | "assistant", "content": str}, ...], ending with the user's turn.
                Older turns are dropped from the left once the context exceeds `context.max_len` words.
            generation: GenerationConfig fields, e.g. strategy="beam", beam_size=3 (default greedy).

        Raises:
            InputError: no messages, an empty message, an unknown role, or a last message not from the user.

        Example:
            >>> from PIL import Image
            >>> from polymodal.data.dialogue import DialogueRecord, Turn, build_chat_tokenizer
            >>> turn = Turn("what colour is it?", "red", "open/colour")
            >>> tokenizer = build_chat_tokenizer([DialogueRecord("0", "a.png", [turn])])
            >>> assistant = Assistant(ChatModelConfig(image_size=32), tokenizer)  # untrained: any words
            >>> image = Image.new("RGB", (32, 32))
            >>> reply = assistant.chat(image, [{"role": "user", "content": "what colour is it?"}])
            >>> set(reply.split()) <= set(tokenizer.words)  # words of its vocabulary
            True
            >>> assistant.chat(image, [{"role": "assistant", "content": "red"}])
            Traceback (most recent call last):
            polymodal.errors.InputError: the last message must be the user's question
        """
        return self.chat_reply(image, messages, **generation).text

    @torch.inference_mode()
    def chat_reply(self, image: ImageInput, messages: list[Message], **generation: Any) -> ChatReply:
        """As `chat`, with the reply's confidence and whether it is below the model's threshold (ChatReply)."""
        messages = [dict(m, content=strip_not_sure(m["content"])) if isinstance(m, dict)  # the guess, not our words
                    and m.get("role") == "assistant" and isinstance(m.get("content"), str) else m for m in messages]
        ids = context_ids(self.tokenizer, messages, self.cfg.context.max_len)
        images = images_to_batch(image, self.cfg.image_size, self.device)
        generation = {"strategy": "greedy", "max_len": self.cfg.max_answer_len + 1, **generation}
        tokens = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            regions = self.encoder(images)
        reply = self.answer_ids(regions, tokens, GenerationConfig(**generation))
        cal = self.calibration or ReplyCalibration()
        scores = score_replies(self.decoder.step, self.init_state(regions, tokens), self.tokenizer.bos_id,
                               self.tokenizer.eos_id, reply, self.never)
        return judge(self.tokenizer.decode(reply[0]), float(scores.confidence(cal.temperature, cal.method)[0]),
                     self.calibration)

    # ---- save / load: the calibration, when fitted, rides in config.json ------------------------
    def config_dict(self) -> dict[str, Any]:
        out = super().config_dict()
        if self.calibration is not None:
            out["calibration"] = dataclasses.asdict(self.calibration)
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None, source: str = "config.json") -> Any:
        """As SavedModel's, plus the reply calibration (None for a model saved without one)."""
        model = super().from_config(config, tokenizer, source)
        model.calibration = load_calibration(config, source)
        return model
