"""Caption decoders with one step interface that the shared generate module drives.

A decoder's decoding state is a plain dict of batch-first tensors, so beam search can reorder
any decoder's state with `index_select(0, ...)` without knowing what is inside.

    state = decoder.init_state(features)                  # features: (B, N, C)
    logits, state, attention = decoder.step(tokens, state)  # tokens: (B,) -> logits (B, V)
    logits, aux = decoder(features, tokens_in)              # teacher forcing: (B, T) -> (B, T, V)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import DecoderConfig
from ..registry import DECODERS
from .attention import AdditiveAttention
from .state import State, concat_states


class CaptionDecoder(nn.Module):
    """Base class; subclasses implement `init_state`, `step` and may speed up `forward`.

    `join_states(old, new)` merges the state of new inputs into a running batch (continuous batching,
    `generate.BeamBatch`); fixed-size states just concatenate. None: this decoder's states cannot.
    """

    pad_id = 0
    join_states: Callable[[State, State], State] | None = staticmethod(concat_states)

    def init_state(self, features: torch.Tensor) -> State:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        state = self.init_state(features)
        logits, attention = [], []
        for t in range(tokens.shape[1]):
            step_logits, state, alpha = self.step(tokens[:, t], state)
            logits.append(step_logits)
            if alpha is not None:
                attention.append(alpha)
        attn = torch.stack(attention, dim=1) if attention else None  # (B, T, N)
        return torch.stack(logits, dim=1), {"attention": attn, "losses": {}}


class SeedLSTMDecoder(CaptionDecoder):
    """The seed model: global image feature -> Linear (512 -> 128) -> LSTM initial state.

    Teacher forcing runs the whole sequence through cuDNN/oneDNN's LSTM in one call.
    """

    def __init__(self, cfg: DecoderConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        self.image_proj = nn.Linear(feature_dim, cfg.feature_dim)
        self.init_h = nn.Linear(cfg.feature_dim, cfg.hidden_dim)
        self.init_c = nn.Linear(cfg.feature_dim, cfg.hidden_dim)
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=self.pad_id)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)

    def init_state(self, features: torch.Tensor) -> State:
        v = torch.relu(self.image_proj(features.mean(dim=1)))  # (B, 128)
        return {"h": torch.tanh(self.init_h(v)), "c": torch.tanh(self.init_c(v))}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        hc = (state["h"].unsqueeze(0).contiguous(), state["c"].unsqueeze(0).contiguous())
        out, (h, c) = self.lstm(self.embed(tokens).unsqueeze(1), hc)
        return self.out(self.dropout(out[:, 0])), {"h": h[0], "c": c[0]}, None

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        state = self.init_state(features)
        out, _ = self.lstm(self.embed(tokens), (state["h"].unsqueeze(0), state["c"].unsqueeze(0)))
        return self.out(self.dropout(out)), {"attention": None, "losses": {}}


class AttentionLSTMDecoder(CaptionDecoder):
    """Show, Attend and Tell: soft attention each step, a gating scalar, doubly stochastic regularisation."""

    def __init__(self, cfg: DecoderConfig, feature_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.attention = AdditiveAttention(feature_dim, cfg.hidden_dim, cfg.attention_dim)
        self.init_h = nn.Linear(feature_dim, cfg.hidden_dim)
        self.init_c = nn.Linear(feature_dim, cfg.hidden_dim)
        self.gate = nn.Linear(cfg.hidden_dim, feature_dim)  # beta_t in sec. 4.2.1
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=self.pad_id)
        self.cell = nn.LSTMCell(cfg.embed_dim + feature_dim, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)

    def init_state(self, features: torch.Tensor) -> State:
        mean = features.mean(dim=1)
        return {
            "features": features,
            "keys": self.attention.feature_proj(features),  # projected once, reused every step
            "h": torch.tanh(self.init_h(mean)),
            "c": torch.tanh(self.init_c(mean)),
        }

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        context, alpha = self.attention(state["features"], state["h"], state["keys"])
        context = torch.sigmoid(self.gate(state["h"])) * context
        h, c = self.cell(torch.cat([self.embed(tokens), context], dim=-1), (state["h"], state["c"]))
        new_state = dict(state, h=h, c=c)
        return self.out(self.dropout(h)), new_state, alpha

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits, aux = super().forward(features, tokens)
        # Doubly stochastic regularisation (sec. 4.2.1): every region should get attention ~1 over the caption.
        mask = (tokens != self.pad_id).unsqueeze(-1).to(aux["attention"].dtype)  # (B, T, 1)
        coverage = (aux["attention"] * mask).sum(dim=1)  # (B, N)
        aux["losses"]["attention_reg"] = self.cfg.doubly_stochastic * ((1.0 - coverage) ** 2).mean()
        return logits, aux


def seed_lstm(cfg: DecoderConfig, feature_dim: int, vocab_size: int) -> CaptionDecoder:
    return SeedLSTMDecoder(cfg, feature_dim, vocab_size)


def attention_lstm(cfg: DecoderConfig, feature_dim: int, vocab_size: int) -> CaptionDecoder:
    return AttentionLSTMDecoder(cfg, feature_dim, vocab_size)


def build_decoder(cfg: DecoderConfig, feature_dim: int, vocab_size: int) -> CaptionDecoder:
    return DECODERS.build(cfg.name, cfg, feature_dim, vocab_size)
