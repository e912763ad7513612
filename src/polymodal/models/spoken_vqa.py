"""End-to-end spoken VQA: the question is heard, never transcribed.

speech -> normalised log-mel -> the recognizer's front end (ConvSubsample x4 + BiLSTM, from a trained
`SpeechRecognizer`, frozen by default) -> LayerNorm + linear to the fusion's "text" width -> a small BiLSTM
(`question.layers`; 0 = the projection only) -> "text" tokens (B, T', D) with their mask; the image side,
the fusion (any `registry.FUSION` variant) and the answer classifier are `VQAModel`'s, usually started from
a trained text VQA model (`from_parts`). Probabilities are calibrated as VQAModel's (a fitted temperature).

The config is VQAModelConfig's plus `speech` (the recognizer's ASRConfig) and `freeze_speech`; its
`question` section sizes the adapter (hidden_dim: the token width, layers, dropout; the word fields are
unused). There is no tokenizer.json.

Example:
    A trained model (`polymodal train configs/spoken_vqa.yaml` writes runs/spoken_vqa):

    >>> model = polymodal.load("runs/spoken_vqa/model")  # doctest: +SKIP
    >>> model.answer("scene.png", "question.wav")  # doctest: +SKIP
    ['red']

    An untrained one:

    >>> from PIL import Image
    >>> from polymodal.models.asr import ASRConfig
    >>> cfg = SpokenVQAConfig(image_size=32, speech=ASRConfig(n_mels=40, channels=4, dim=16, hidden=8, layers=1))
    >>> model = SpokenVQAModel(cfg, None, answers=["red", "blue"])
    >>> model.predict(Image.new("RGB", (32, 32)), torch.randn(16000)).shape  # (questions, answers)
    torch.Size([1, 2])
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.audio import MAX_SPEECH_SECONDS, MelConfig, is_silent
from ..errors import CheckpointError, InputError
from ..nn.question import QuestionEncoderConfig
from ..nn.speech import BiLSTMEncoder, ConvSubsample
from ..text.tokenizer import Tokenizer
from .asr import SAMPLE_RATE, ASRConfig, AudioInput, SpeechRecognizer, pad_mels, speech_features, to_wave
from .vqa import VQAModel, VQAModelConfig, pair_up

FRONT_END = ("subsample", "encoder")  # the recognizer's modules that the spoken question goes through


@dataclass
class SpokenVQAConfig(VQAModelConfig):
    speech: ASRConfig = field(default_factory=ASRConfig)  # the recognizer front end (its config.json "model")
    freeze_speech: bool = True        # keep the recognizer's front end as trained (its states can be cached)
    pool: int = 2                     # average the front-end states over this many 40 ms frames: shorter token
                                      # sequences (a word lasts about 300 ms), measured 1.7x faster training steps
    max_seconds: float = MAX_SPEECH_SECONDS  # longest spoken question accepted


class SpeechQuestionEncoder(nn.Module):
    """Speech -> question tokens: the recognizer's front end, then a projection and a small BiLSTM adapter.

    Example:
        >>> enc = SpeechQuestionEncoder(ASRConfig(n_mels=40, channels=4, dim=16, hidden=8, layers=1),
        ...                             QuestionEncoderConfig(hidden_dim=32))
        >>> mel, lengths = pad_mels([enc.features(torch.randn(16000)), enc.features(torch.randn(8000))])
        >>> text, mask = enc(mel, lengths)
        >>> tuple(text.shape), mask.sum(1).tolist()  # 100 frames / s, x4 fewer after the subsampling
        ((2, 26, 32), [26, 13])
    """

    def __init__(self, speech: ASRConfig, adapter: QuestionEncoderConfig, freeze: bool = True, pool: int = 1):
        super().__init__()
        self.frozen, self.pool = freeze, max(1, pool)
        self.mel_cfg = MelConfig(n_mels=speech.n_mels, n_fft=speech.n_fft, hop_length=speech.hop_length)
        self.subsample = ConvSubsample(speech.n_mels, speech.channels, speech.dim)
        self.encoder = BiLSTMEncoder(speech.dim, speech.hidden, speech.layers, speech.dropout)
        self.state_dim = 2 * speech.hidden
        self.proj = nn.Sequential(nn.LayerNorm(self.state_dim), nn.Linear(self.state_dim, adapter.hidden_dim))
        self.lstm = nn.LSTM(adapter.hidden_dim, adapter.hidden_dim // 2, num_layers=adapter.layers, batch_first=True,
                            bidirectional=True, dropout=adapter.dropout if adapter.layers > 1 else 0.0) \
            if adapter.layers > 0 else None
        self.dropout = nn.Dropout(adapter.dropout)
        self.out_dim = 2 * (adapter.hidden_dim // 2) if self.lstm is not None else adapter.hidden_dim
        if freeze:
            for name in FRONT_END:
                getattr(self, name).requires_grad_(False)

    def train(self, mode: bool = True) -> SpeechQuestionEncoder:
        """As nn.Module's, but a frozen front end stays in eval mode (no dropout: its states are fixed)."""
        super().train(mode)
        if self.frozen:
            for name in FRONT_END:
                getattr(self, name).eval()
        return self

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (n_mels, T) of a 16 kHz waveform (S,), exactly as the recognizer computes it."""
        return speech_features(wave, self.mel_cfg)

    def states(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, T) normalised log-mel -> front-end states (B, T', 2 * hidden) and lengths T' (B,)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x, lengths = self.subsample(mel, lengths)  # (B, T', dim)
            return self.encoder(x, lengths), lengths

    def adapt(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end states (B, T', S) and lengths (B,) -> question tokens (B, T'/pool, D) and their mask."""
        if self.pool > 1:  # padding frames are zero: a partly padded window averages in zeros, harmlessly
            b, t, d = states.shape
            states = nn.functional.pad(states, (0, 0, 0, -t % self.pool)).view(b, -1, self.pool, d).mean(2)
            lengths = (lengths + self.pool - 1) // self.pool
        mask = torch.arange(states.shape[1], device=states.device)[None] < lengths.to(states.device)[:, None]
        x = self.dropout(self.proj(states.to(self.proj[1].weight.dtype)))
        if self.lstm is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True,
                                                       enforce_sorted=False)
            x = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        return x * mask.unsqueeze(-1), mask

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adapt(*self.states(mel, lengths))


def load_wave(item: AudioInput, max_seconds: float | None) -> torch.Tensor:
    """A 16 kHz mono waveform (S,) from a file, a file's bytes or samples; InputError on silence."""
    wave = to_wave(item, max_seconds)
    if is_silent(wave, SAMPLE_RATE):
        name = item if isinstance(item, (str, os.PathLike)) else "the audio"
        raise InputError(f"{name}: no speech heard (silence); record the question again, nearer the microphone")
    return wave


class SpokenVQAModel(VQAModel):
    """Answers spoken questions about images, straight from the speech (no transcript)."""

    architecture, config_cls, needs_tokenizer = "spoken_vqa", SpokenVQAConfig, False
    cfg: SpokenVQAConfig

    def __init__(self, cfg: SpokenVQAConfig, tokenizer: Tokenizer | None = None, answers: list[str] | None = None):
        super().__init__(cfg, tokenizer, list(answers or []))  # type: ignore[arg-type]

    def build_question(self, cfg: VQAModelConfig, tokenizer: Tokenizer | None) -> nn.Module:
        assert isinstance(cfg, SpokenVQAConfig)
        return SpeechQuestionEncoder(cfg.speech, cfg.question, cfg.freeze_speech, cfg.pool)

    @classmethod
    def from_parts(cls, vqa: VQAModel, recognizer: SpeechRecognizer, adapter: QuestionEncoderConfig | None = None,
                   freeze_speech: bool = True, pool: int = 2) -> SpokenVQAModel:
        """A spoken VQA model whose image side, fusion, classifier, answers and temperature are `vqa`'s and whose
        front end is `recognizer`'s; only the adapter starts untrained.

        Example:
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> vqa = VQAModel(VQAModelConfig(image_size=32), WordTokenizer.build(["what colour?"]), ["red"])
            >>> asr = SpeechRecognizer(ASRConfig(n_mels=40, channels=4, dim=16, hidden=8, layers=1))
            >>> model = SpokenVQAModel.from_parts(vqa, asr)
            >>> model.answers, bool(torch.equal(model.classifier[1].weight, vqa.classifier[1].weight))
            (['red'], True)
        """
        base = {f.name: copy.deepcopy(getattr(vqa.cfg, f.name)) for f in fields(VQAModelConfig) if f.name != "question"}
        adapter = adapter or QuestionEncoderConfig(hidden_dim=vqa.cfg.fusion.dim, layers=1)
        cfg = SpokenVQAConfig(**base, question=adapter, speech=copy.deepcopy(recognizer.cfg),
                              freeze_speech=freeze_speech, pool=pool)
        model = cls(cfg, None, vqa.answers)
        own = {k: v for k, v in vqa.state_dict().items() if not k.startswith("question.")}
        missing, unexpected = model.load_state_dict(own, strict=False)
        if unexpected or any(not k.startswith("question.") for k in missing):
            raise CheckpointError(f"cannot start a spoken VQA model from this VQA model: missing {missing}, "
                                  f"unexpected {unexpected}")
        front = {k: v for k, v in recognizer.state_dict().items() if k.split(".")[0] in FRONT_END}
        model.question.load_state_dict(front, strict=False)
        model.temperature = vqa.temperature
        return model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: "images" (B, 3, H, W) or "image_features" (B, N, C); the question as "mel" (B, F, T) with
        "mel_lengths" (B,), or as cached front-end "speech_states" (B, T', S) with "speech_lengths" (B,);
        for a loss "targets" (B, A). Returns logits (B, A) and named losses."""
        regions = batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])
        if "speech_states" in batch:
            states, lengths = batch["speech_states"], batch["speech_lengths"]
        else:
            states, lengths = self.question.states(batch["mel"], batch["mel_lengths"])
        logits, heads = self.fuse(regions, *self.question.adapt(states, lengths))
        return logits, self.losses(logits, heads, batch)

    # ---- inference ---------------------------------------------------------------------------
    def _audio_pairs(self, images: Any, audio: Any) -> tuple[list[Any], list[Any]]:
        single = isinstance(audio, (str, os.PathLike, bytes)) or (
            isinstance(audio, (torch.Tensor, np.ndarray)) and audio.ndim == 1)
        return pair_up(images, [audio] if single else list(audio), "spoken questions")

    @torch.inference_mode()
    def predict(self, images: Any, audio: Any) -> torch.Tensor:
        """Calibrated answer probabilities (B, A) for images and spoken questions (paths, bytes, 16 kHz waves)."""
        self.eval()
        imgs, clips = self._audio_pairs(images, audio)
        mel, lengths = pad_mels([self.question.features(load_wave(c, self.cfg.max_seconds)) for c in clips])
        logits, _ = self({"images": self.preprocess(imgs), "mel": mel.to(self.device), "mel_lengths": lengths})
        return (logits.float() / self.temperature).softmax(-1)

    def answer(self, images: Any, audio: Any) -> list[str]:
        """The best answer to each spoken question (an audio file path, its bytes or a 16 kHz waveform, or a list).

        Raises:
            InputError: silence, mismatched numbers of images and questions. DataError: unreadable audio.
            AudioTooLongError: a question over `cfg.max_seconds`.

        Example:
            >>> from PIL import Image
            >>> cfg = SpokenVQAConfig(image_size=32, speech=ASRConfig(n_mels=40, channels=4, dim=16, hidden=8))
            >>> model = SpokenVQAModel(cfg, None, ["yes", "no"])
            >>> model.answer(Image.new("RGB", (32, 32)), [torch.randn(16000), torch.randn(9000)])  # doctest: +SKIP
            ['no', 'no']
        """
        return super().answer(images, audio)

    def answer_topk(self, images: Any, audio: Any, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most likely answers to each spoken question with their calibrated probabilities, best first."""
        return super().answer_topk(images, audio, k)
