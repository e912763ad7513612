"""Building blocks of a CTC speech recognizer: SpecAugment masking, conv subsampling and a BiLSTM over time.

`spec_augment` zeroes random bands of mel channels and random spans of frames of each (normalised)
log-mel spectrogram (Park et al. 2019, "SpecAugment", section 2, without time warping). `ConvSubsample`
turns (B, n_mels, T) into (B, T / 4, dim) with two stride-2 3x3 convolutions, and `BiLSTMEncoder` reads
that sequence both ways, ignoring the padding of shorter utterances.

Example:
    >>> conv = ConvSubsample(n_mels=40, channels=8, dim=16)
    >>> x, lengths = conv(torch.randn(2, 40, 100), torch.tensor([100, 61]))
    >>> x.shape, lengths.tolist()
    (torch.Size([2, 25, 16]), [25, 16])
    >>> BiLSTMEncoder(16, hidden=8, layers=2)(x, lengths).shape
    torch.Size([2, 25, 16])
"""

from __future__ import annotations

import torch
from torch import nn


def spec_augment(mel: torch.Tensor, lengths: torch.Tensor, freq_masks: int = 2, freq_width: int = 10,
                 time_masks: int = 2, time_width: float = 0.05, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """A copy of `mel` (B, F, T) with `freq_masks` bands of up to `freq_width` channels and `time_masks` spans of up
    to `time_width` of each utterance's length zeroed (zero is the mean of a normalised spectrogram).

    Example:
        >>> out = spec_augment(torch.ones(1, 40, 100), torch.tensor([100]), generator=torch.Generator().manual_seed(0))
        >>> 0 < int((out == 0).sum()) < 40 * 100
        True
    """
    b, f, t = mel.shape
    keep = torch.ones_like(mel, dtype=torch.bool)
    chans, frames = torch.arange(f, device=mel.device), torch.arange(t, device=mel.device)
    for i in range(b):
        for _ in range(freq_masks):
            width = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(f - width, 1), (1,), generator=generator))
            keep[i] &= ~((chans >= start) & (chans < start + width))[:, None]
        span = max(int(time_width * int(lengths[i])), 1)
        for _ in range(time_masks):
            width = int(torch.randint(0, span + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(int(lengths[i]) - width, 1), (1,), generator=generator))
            keep[i] &= ~((frames >= start) & (frames < start + width))[None, :]
    return mel * keep


class ConvSubsample(nn.Module):
    """(B, n_mels, T) log-mel -> (B, ceil(ceil(T / 2) / 2), dim): two stride-2 convolutions, then a linear layer."""

    def __init__(self, n_mels: int, channels: int = 32, dim: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU())
        self.proj = nn.Linear(channels * ((n_mels + 3) // 4), dim)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(mel.unsqueeze(1))                  # (B, C, F/4, T/4)
        x = x.flatten(1, 2).transpose(1, 2)              # (B, T/4, C * F/4)
        lengths = (lengths + 1) // 2
        return self.proj(x), (lengths + 1) // 2


class BiLSTMEncoder(nn.Module):
    """A bidirectional LSTM over (B, T, dim) -> (B, T, 2 * hidden); frames past each length are zeros."""

    def __init__(self, dim: int, hidden: int = 128, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
