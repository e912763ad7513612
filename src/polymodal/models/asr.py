"""A speech recognizer: log-mel -> conv subsampling (x4 in time) -> BiLSTM -> characters, trained with CTC.

The saved folder is config.json (the architecture, its "model" section with the alphabet, and the
"lexicon": the words of the training transcripts, which the beam decoder may spell) and
model.safetensors; there is no tokenizer.json, the characters are the vocabulary. Each utterance's
log-mel is normalised per channel (zero mean, unit variance over its frames), so loudness does not count.

Example:
    >>> import tempfile
    >>> from polymodal.data.audio import tone
    >>> model = SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=16, hidden=16, layers=1), ["red", "circle"])
    >>> len(model.transcribe([tone(440, 1.0)]))
    1
    >>> tmp = tempfile.TemporaryDirectory()
    >>> SpeechRecognizer.from_pretrained(model.save_pretrained(f"{tmp.name}/asr")).lexicon.words == {"red", "circle"}
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.audio import MAX_SPEECH_SECONDS, MelConfig, check_length, is_silent, load_audio, log_mel
from ..errors import CheckpointError
from ..nn.speech import BiLSTMEncoder, ConvSubsample, spec_augment
from ..text.ctc import ALPHABET, CharVocab, Lexicon, beam_decode, greedy_decode
from .base import SavedModel

SAMPLE_RATE = 16000
AudioInput = str | os.PathLike | bytes | torch.Tensor | np.ndarray


@dataclass
class ASRConfig:
    n_mels: int = 80
    n_fft: int = 400                  # 25 ms windows at 16 kHz
    hop_length: int = 160             # 10 ms hop; after x4 subsampling one output per 40 ms
    channels: int = 32                # conv subsampling channels
    dim: int = 128                    # the BiLSTM's input width
    hidden: int = 128                 # per direction
    layers: int = 2
    dropout: float = 0.2
    alphabet: str = ALPHABET
    freq_masks: int = 2               # SpecAugment (training only): mel bands zeroed per utterance
    freq_width: int = 10              #   up to this many channels each
    time_masks: int = 2               #   spans of frames zeroed per utterance
    time_width: float = 0.05          #   up to this fraction of the utterance each
    beam_size: int = 8                # transcribe(): 1 = greedy


def speech_features(wave: torch.Tensor, mel_cfg: MelConfig) -> torch.Tensor:
    """Normalised log-mel (n_mels, T) of a 16 kHz mono waveform (S,): what the recognizer (and any model built
    on its front end) reads; each utterance is normalised on its own."""
    mel = log_mel(wave, mel_cfg)
    return (mel - mel.mean(-1, keepdim=True)) / (mel.std(-1, keepdim=True) + 1e-5)


def to_wave(item: AudioInput, max_seconds: float | None) -> torch.Tensor:
    """A 16 kHz mono waveform (S,) from a file, a file's bytes or samples; refused over `max_seconds`."""
    if isinstance(item, (str, os.PathLike, bytes)):
        return load_audio(item, SAMPLE_RATE, max_seconds=max_seconds)  # refused before decoding it all
    return check_length(torch.as_tensor(np.asarray(item, dtype=np.float32)).flatten(), SAMPLE_RATE, max_seconds)


def pad_mels(mels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (F, T_i) spectrograms into (B, F, max T), zero-padded, and their lengths (B,)."""
    lengths = torch.tensor([m.shape[-1] for m in mels])
    out = torch.zeros(len(mels), mels[0].shape[0], int(lengths.max()))
    for i, m in enumerate(mels):
        out[i, :, :m.shape[-1]] = m.float()
    return out, lengths


class SpeechRecognizer(SavedModel, nn.Module):
    """CTC character recognizer; `transcribe(paths or waveforms) -> list[str]`."""

    architecture, config_cls, needs_tokenizer = "asr", ASRConfig, False

    def __init__(self, cfg: ASRConfig, lexicon: Sequence[str] = ()):
        super().__init__()
        self.cfg, self.tokenizer = cfg, None
        self.vocab = CharVocab(cfg.alphabet)
        self.lexicon = Lexicon(set(lexicon)) if lexicon else None
        self.mel_cfg = MelConfig(n_mels=cfg.n_mels, n_fft=cfg.n_fft, hop_length=cfg.hop_length)
        self.subsample = ConvSubsample(cfg.n_mels, cfg.channels, cfg.dim)
        self.encoder = BiLSTMEncoder(cfg.dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, len(self.vocab) + 1)  # + the CTC blank at 0

    # ---- saving: the lexicon rides in config.json --------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "lexicon": sorted(self.lexicon.words) if self.lexicon else []}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Any = None, source: str = "config.json") -> Any:
        lexicon = config.get("lexicon", [])
        if not isinstance(lexicon, list) or not all(isinstance(w, str) for w in lexicon):
            raise CheckpointError(f"{source}: 'lexicon' must be a list of words; copy config.json from the same save")
        model = super().from_config(config, tokenizer, source)
        model.lexicon = Lexicon(set(lexicon)) if lexicon else None
        return model

    # ---- features ---------------------------------------------------------------------------------
    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (n_mels, T) of a 16 kHz mono waveform (S,)."""
        return speech_features(wave, self.mel_cfg)

    def _wave(self, item: AudioInput, max_seconds: float | None) -> torch.Tensor:
        return to_wave(item, max_seconds)

    # ---- the network ------------------------------------------------------------------------------
    def log_probs(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) normalised log-mel -> per-frame log-probabilities (B, T', V) and lengths T' (B,)."""
        if self.training and (self.cfg.freq_masks or self.cfg.time_masks):
            mel = spec_augment(mel, lengths, self.cfg.freq_masks, self.cfg.freq_width, self.cfg.time_masks,
                               self.cfg.time_width)
        x, lengths = self.subsample(mel, lengths)        # (B, T', dim)
        x = self.encoder(self.dropout(x), lengths)       # (B, T', 2 * hidden)
        return self.head(self.dropout(x)).log_softmax(-1), lengths

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: "mel" (B, F, T), "mel_lengths" (B,), "tokens" (B, L) character ids, "token_lengths" (B,)."""
        logp, lengths = self.log_probs(batch["mel"], batch["mel_lengths"])
        loss = F.ctc_loss(logp.transpose(0, 1).float(), batch["tokens"], lengths, batch["token_lengths"],
                          blank=0, zero_infinity=True)
        return logp, {"loss": loss}

    @torch.inference_mode()
    def decode_mels(self, mels: Sequence[torch.Tensor], beam_size: int | None = None,
                    use_lexicon: bool = True) -> list[str]:
        """Transcripts of normalised log-mels (from `features`): greedy when `beam_size` is 1, else prefix beam."""
        was_training = self.training
        self.eval()
        mel, lengths = pad_mels(mels)
        logp, lengths = self.log_probs(mel.to(self.device), lengths.to(self.device))
        logp = logp.float().cpu().numpy()
        beam = self.cfg.beam_size if beam_size is None else beam_size
        lexicon = self.lexicon if use_lexicon else None
        out = [greedy_decode(lp[:n], self.vocab) if beam <= 1 else beam_decode(lp[:n], self.vocab, beam, lexicon)
               for lp, n in zip(logp, lengths.tolist(), strict=True)]
        self.train(was_training)
        return out

    def transcribe(self, audio: Sequence[AudioInput], beam_size: int | None = None, batch_size: int = 16,
                   max_seconds: float | None = MAX_SPEECH_SECONDS) -> list[str]:
        """What is said in each audio file (any format PyAV decodes, by path or as bytes) or 16 kHz mono waveform.

        Silence (no 20 ms frame above -50 dBFS) transcribes as "" without running the network: per-utterance
        normalisation would otherwise blow up its noise floor into words. Any sample rate and channel count
        is resampled to 16 kHz mono.

        Raises:
            DataError: a file is missing, empty or does not decode.
            AudioTooLongError: an input is over `max_seconds` (None: no limit), refused before it is decoded in full.

        Example:
            >>> model = SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=16, hidden=16, layers=1))
            >>> model.transcribe([torch.zeros(16000)])
            ['']
        """
        texts: list[str] = []
        for i in range(0, len(audio), batch_size):
            waves = [self._wave(a, max_seconds) for a in audio[i:i + batch_size]]
            heard = [j for j, wave in enumerate(waves) if not is_silent(wave, SAMPLE_RATE)]
            decoded = dict(zip(heard, self.decode_mels([self.features(waves[j]) for j in heard], beam_size)
                               if heard else [], strict=True))
            texts += [decoded.get(j, "") for j in range(len(waves))]
        return texts

    @torch.inference_mode()
    def ood_features(self, audio: Sequence[AudioInput], batch_size: int = 16) -> torch.Tensor:
        """The recognizer's own encoder states, mean-pooled over each utterance's frames -> (N, 2 * hidden):
        what `eval/ood.py` compares with the training audio to say a recording is unlike it.

        Example:
            >>> model = SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=16, hidden=8, layers=1))
            >>> model.ood_features([torch.randn(16000), torch.randn(8000)]).shape
            torch.Size([2, 16])
        """
        was_training, out = self.training, []
        self.eval()
        for i in range(0, len(audio), batch_size):
            mel, lengths = pad_mels([self.features(self._wave(a, MAX_SPEECH_SECONDS)) for a in audio[i:i + batch_size]])
            x, lengths = self.subsample(mel.to(self.device), lengths.to(self.device))
            states = self.encoder(x, lengths)  # (B, T', 2 * hidden); padding frames left out of the mean
            valid = (torch.arange(states.shape[1], device=states.device)[None] < lengths[:, None]).unsqueeze(-1)
            out.append(((states * valid).sum(1) / valid.sum(1).clamp(min=1)).float().cpu())
        self.train(was_training)
        return torch.cat(out)
