"""Question encoders: question word ids -> per-word features and a padding mask, for VQA and the assistant.

Example:
    >>> import torch
    >>> encoder = LSTMQuestionEncoder(QuestionEncoderConfig(hidden_dim=8), vocab_size=10)
    >>> features, mask = encoder(torch.tensor([[3, 4, 0]]))
    >>> tuple(features.shape), mask.tolist()
    ((1, 3, 8), [[True, True, False]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuestionEncoderConfig:
    name: str = "lstm"                # lstm (bidirectional) | transformer
    embed_dim: int = 64
    hidden_dim: int = 128             # output width (both LSTM directions together)
    layers: int = 1
    heads: int = 4                    # transformer only
    max_len: int = 20                 # questions are truncated to this many words
    dropout: float = 0.1



class LSTMQuestionEncoder(nn.Module):
    """Word embedding + bidirectional LSTM; padding is packed away so it never changes the states."""

    def __init__(self, cfg: QuestionEncoderConfig, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim // 2, num_layers=cfg.layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = 2 * (cfg.hidden_dim // 2)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens != 0  # (B, T)
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.embed(tokens)), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return out, mask  # (B, T, H), (B, T)


class TransformerQuestionEncoder(nn.Module):
    """Word + learned position embeddings and a small pre-norm transformer encoder."""

    def __init__(self, cfg: QuestionEncoderConfig, vocab_size: int, max_positions: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.hidden_dim, padding_idx=0)
        self.position = nn.Embedding(max_positions, cfg.hidden_dim)
        layer = nn.TransformerEncoderLayer(cfg.hidden_dim, cfg.heads, 2 * cfg.hidden_dim, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.out_dim = cfg.hidden_dim

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = tokens != 0
        positions = torch.arange(tokens.shape[1], device=tokens.device).clamp_max(self.position.num_embeddings - 1)
        x = self.embed(tokens) + self.position(positions)
        return self.encoder(x, src_key_padding_mask=~mask), mask


def lstm_question_encoder(cfg: QuestionEncoderConfig, vocab_size: int) -> nn.Module:
    return LSTMQuestionEncoder(cfg, vocab_size)


def transformer_question_encoder(cfg: QuestionEncoderConfig, vocab_size: int) -> nn.Module:
    return TransformerQuestionEncoder(cfg, vocab_size)
