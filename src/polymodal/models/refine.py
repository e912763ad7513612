"""Iterative refinement (deliberation): caption once, then re-attend to the image and the draft, and rewrite.

The first pass is a trained `Captioner`, kept frozen; a second-pass LSTM attends at every step to
the image regions *and* to a bidirectional encoding of the first-pass draft (Xia et al. 2017,
"Deliberation networks"). The second pass is trained on the drafts the first pass actually
produces, so it learns to fix that model's own mistakes.

Example:
    A trained model (`polymodal train configs/refine.yaml` writes runs/refine):

    >>> model = polymodal.load("runs/refine")  # doctest: +SKIP
    >>> model.caption(["a.png"])  # draft, then rewrite  # doctest: +SKIP
    ['a small red circle to the left of a large blue square']

    A second pass, untrained, over the bundled captioner as the first:

    >>> import polymodal
    >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
    >>> from polymodal.data.shapes import Scene, ShapeObject, render
    >>> model = RefiningCaptioner.from_captioner(polymodal.load(bundled_model_dir(ATTENTION_LSTM)), RefinerConfig())
    >>> image = render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64)
    >>> model.caption([image], refine=False)  # the first pass alone
    ['there is a large red circle']
    >>> len(model.caption([image]))  # draft, then rewrite (untrained here: any words)
    1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, from_dict
from ..generate import GenerationConfig, Hypothesis, generate
from ..nn.attention import AdditiveAttention
from ..text.tokenizer import Tokenizer
from .base import forget_initial_weights
from .captioner import Captioner

State = dict[str, torch.Tensor]


@dataclass
class RefinerConfig:
    embed_dim: int = 128
    hidden_dim: int = 256
    attention_dim: int = 128
    draft_dim: int = 128          # per-direction size of the draft's BiLSTM encoding
    dropout: float = 0.2
    draft_beam: int = 1           # beam size of the first pass when drafting (1 = greedy)


class DraftEncoder(nn.Module):
    """Draft token ids (B, L) -> contextual states (B, L, 2 * draft_dim)."""

    def __init__(self, vocab_size: int, cfg: RefinerConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.rnn = nn.LSTM(cfg.embed_dim, cfg.draft_dim, batch_first=True, bidirectional=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(tokens))[0]


class DeliberationDecoder(nn.Module):
    """An attention LSTM with two attentions per step: over image regions and over the draft."""

    def __init__(self, cfg: RefinerConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        draft_dim = 2 * cfg.draft_dim
        self.image_attention = AdditiveAttention(feature_dim, cfg.hidden_dim, cfg.attention_dim)
        self.draft_attention = AdditiveAttention(draft_dim, cfg.hidden_dim, cfg.attention_dim)
        self.init_h = nn.Linear(feature_dim + draft_dim, cfg.hidden_dim)
        self.init_c = nn.Linear(feature_dim + draft_dim, cfg.hidden_dim)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.cell = nn.LSTMCell(cfg.embed_dim + feature_dim + draft_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)

    def init_state(self, features: torch.Tensor, draft: torch.Tensor, draft_mask: torch.Tensor) -> State:
        mask = draft_mask.unsqueeze(-1).float()
        draft_mean = (draft * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.cat([features.mean(1), draft_mean], dim=-1)
        return {"features": features, "keys": self.image_attention.feature_proj(features),
                "draft": draft, "draft_keys": self.draft_attention.feature_proj(draft), "draft_mask": draft_mask,
                "h": torch.tanh(self.init_h(pooled)), "c": torch.tanh(self.init_c(pooled))}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        image_ctx, alpha = self.image_attention(state["features"], state["h"], state["keys"])
        draft_ctx, _ = self.draft_attention(state["draft"], state["h"], state["draft_keys"], state["draft_mask"])
        h, c = self.cell(torch.cat([self.embed(tokens), image_ctx, draft_ctx], -1), (state["h"], state["c"]))
        return self.out(self.dropout(h)), dict(state, h=h, c=c), alpha


class RefiningCaptioner(Captioner):
    """A frozen first-pass Captioner (its encoder and decoder) plus a trainable deliberation pass."""

    architecture = "refining_captioner"

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer, refiner: RefinerConfig | None = None):
        super().__init__(cfg, tokenizer)
        self.refiner_cfg = refiner or RefinerConfig()
        self.draft_encoder = DraftEncoder(len(tokenizer), self.refiner_cfg)
        self.refiner = DeliberationDecoder(self.refiner_cfg, self.encoder.out_dim, len(tokenizer))
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            p.requires_grad_(False)  # the first pass is fixed; only the second pass learns

    @classmethod
    def from_captioner(cls, first_pass: Captioner, refiner: RefinerConfig) -> RefiningCaptioner:
        model = cls(first_pass.cfg, first_pass.tokenizer, refiner)
        model.encoder.load_state_dict(first_pass.encoder.state_dict())
        model.decoder.load_state_dict(first_pass.decoder.state_dict())
        return model

    def train(self, mode: bool = True) -> RefiningCaptioner:
        super().train(mode)
        self.encoder.eval()  # the frozen first pass always runs as at inference (no dropout, fixed BN)
        self.decoder.eval()
        return self

    def _draft(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First-pass captions as padded ids (B, L) and their mask; an empty draft keeps one <eos>."""
        cfg = GenerationConfig(strategy="beam" if self.refiner_cfg.draft_beam > 1 else "greedy",
                               beam_size=self.refiner_cfg.draft_beam, max_len=self.cfg.decoder.max_len)
        tok = self.tokenizer
        with torch.no_grad():
            hyps = generate(self.decoder.step, self.decoder.init_state(features), tok.bos_id, tok.eos_id, cfg,
                            suppress_ids=(tok.pad_id,))
        seqs = [h[0].tokens + [tok.eos_id] for h in hyps]
        ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long, device=features.device)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq, device=features.device)
        return ids, ids != tok.pad_id

    def _refiner_state(self, features: torch.Tensor) -> State:
        draft_ids, mask = self._draft(features)
        return self.refiner.init_state(features, self.draft_encoder(draft_ids), mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = batch["tokens"]
        with torch.no_grad():
            features = self.encoder(batch["images"])
        state = self._refiner_state(features)
        logits = []
        for t in range(tokens.shape[1] - 1):
            step_logits, state, _ = self.refiner.step(tokens[:, t], state)
            logits.append(step_logits)
        logits = torch.stack(logits, 1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1),
                               ignore_index=self.tokenizer.pad_id)
        return logits, {"caption_loss": loss, "loss": loss}

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None,
                 refine: bool = True) -> list[list[Hypothesis]]:
        if not refine:
            return super().generate(images, cfg)
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        state = self._refiner_state(self.encoder(images))
        tok = self.tokenizer
        return generate(self.refiner.step, state, tok.bos_id, tok.eos_id, cfg, suppress_ids=(tok.pad_id,))

    def caption_nbest(self, images: Any, refine: bool = True, banned_words: Sequence[str] = (),
                      **generation: Any) -> list[list[str]]:
        self.eval()
        hyps = self.generate(self.preprocess(images), self.generation_config(banned_words, **generation), refine=refine)
        return [[self.tokenizer.decode(h.tokens) for h in per_image] for per_image in hyps]

    def caption(self, images: Any, refine: bool = True, **generation: Any) -> list[str]:
        return [h[0] for h in self.caption_nbest(images, refine=refine, **generation)]

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "refiner": dataclasses.asdict(self.refiner_cfg)}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer,
                    source: str = "config.json") -> RefiningCaptioner:
        cfg = from_dict(ModelConfig, config["model"], f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer, from_dict(RefinerConfig, config.get("refiner", {}), f"{source}:refiner"))
