"""Video question answering over frames and sound, fused by any `registry.FUSION` variant.

clip -> MediaEncoder -> {"video": (B, T, D), "audio": (B, A, D)}; question -> the VQA question encoder
-> "text" (B, L, Q); {"video", "audio", "text"} -> fusion -> answer classifier (B, answers).
Feature level (e.g. cross_attention with the question as query over frame and audio tokens) or
decision level (one classifier head per modality, then a vote); as in VQA, each head of a
decision-level fusion also learns on its own.

Example:
    A trained model (`polymodal train configs/video_qa.yaml` writes runs/video_qa):

    >>> model = polymodal.load("runs/video_qa/model")  # doctest: +SKIP
    >>> model.answer("clip.mp4", "what shape is heard off screen?")  # doctest: +SKIP
    'star'

    An untrained one on a 2-second clip with a tone for sound:

    >>> import tempfile
    >>> import numpy as np
    >>> from polymodal.data.audio import tone
    >>> from polymodal.data.video import write_video
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tmp = tempfile.TemporaryDirectory()
    >>> frames = np.zeros((16, 32, 32, 3), np.uint8)
    >>> path = write_video(f"{tmp.name}/clip.mp4", frames, fps=8, audio=tone(440, 2.0))
    >>> questions = ["what shape is heard off screen?", "how many shapes appear?"]
    >>> cfg = VideoQAConfig(media=MediaConfig(image_size=32, frames=4))
    >>> model = VideoQA(cfg, WordTokenizer.build(questions), answers=["star", "two"])
    >>> answers = model.answer(path, questions)  # one question gives a string, a list gives a list
    >>> len(answers), set(answers) <= {"star", "two"}
    (2, True)
    >>> tmp.cleanup()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.qa import encode_text
from ..errors import CheckpointError, InputError
from ..nn.fusion.base import FusionConfig, build_fusion
from ..nn.media import MediaConfig, MediaEncoder
from ..nn.question import QuestionEncoderConfig
from ..registry import QUESTION_ENCODERS
from ..text.tokenizer import Tokenizer
from .base import SavedAnswerModel
from .video_captioner import load_clip
from .vqa import soft_cross_entropy


@dataclass
class VideoQAConfig:
    media: MediaConfig = field(default_factory=MediaConfig)
    question: QuestionEncoderConfig = field(default_factory=QuestionEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    dropout: float = 0.1
    modality_dropout: float = 0.0     # training: chance a clip loses one modality (with media.missing_token, one
                                      # checkpoint answers about video with sound, silent video and sound alone)


class VideoQA(SavedAnswerModel, nn.Module):
    """Answers questions about clips by picking from a fixed answer vocabulary."""

    architecture, config_cls = "video_qa", VideoQAConfig

    def __init__(self, cfg: VideoQAConfig, tokenizer: Tokenizer, answers: list[str]):
        super().__init__()
        if not answers:
            raise CheckpointError("a video QA model needs a non-empty answer vocabulary")
        self.cfg, self.tokenizer, self.answers = cfg, tokenizer, list(answers)
        self.media = MediaEncoder(cfg.media)
        self.question = QUESTION_ENCODERS.build(cfg.question.name, cfg.question, len(tokenizer))
        dims = {m: cfg.media.dim for m in cfg.media.modalities} | {"text": self.question.out_dim}
        self.fusion = build_fusion(cfg.fusion, dims, num_classes=len(self.answers))
        self.decision_level = self.fusion.level == "decision"
        self.classifier = None if self.decision_level else nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(self.fusion.out_dim, len(self.answers)))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: media ("frame_features"/"frames", "mel"), "tokens" (B, L) question ids, optional "targets"
        (B, answers) soft scores. Returns answer logits (B, answers) and named losses."""
        text, mask = self.question(batch["tokens"])
        features = {**self.media(batch, self.cfg.modality_dropout), "text": text}
        masks = {"text": mask}
        heads: dict[str, torch.Tensor] = {}
        if self.decision_level:
            heads = self.fusion.head_logits(features, masks)
            logits = self.fusion.combine(heads)
        else:
            logits = self.classifier(self.fusion(features, masks))
        losses: dict[str, torch.Tensor] = {}
        if "targets" in batch:
            losses["answer_loss"] = soft_cross_entropy(logits, batch["targets"])
            if heads:
                losses["head_loss"] = sum(soft_cross_entropy(h, batch["targets"]) for h in heads.values()) / len(heads)
            losses["loss"] = sum(losses.values())
        return logits, losses

    @property
    def ood_inputs(self) -> tuple[str, ...]:
        """The modalities with their own out-of-distribution statistics (eval/ood.py `check_clip`)."""
        return tuple(self.cfg.media.modalities)

    def answer(self, video: str | Path, questions: str | list[str]) -> list[str] | str:
        """Answer one question (returns a string) or several (a list) about one video file.

        Raises:
            InputError: no question, or a question with no known word.
        """
        return self.answer_clip(load_clip(video, self.cfg.media), questions)

    @torch.inference_mode()
    def answer_clip(self, clip: dict[str, torch.Tensor], questions: str | list[str]) -> list[str] | str:
        """`answer` about a clip already loaded with `load_clip` (a caller that also checks it decodes it once)."""
        self.eval()
        qs = [questions] if isinstance(questions, str) else list(questions)
        if not qs:
            raise InputError("no question given")
        clip = {k: v for k, v in clip.items() if k != "times"}
        ids = [encode_text(self.tokenizer, q, self.cfg.question.max_len) for q in qs]
        tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for r, row in enumerate(ids):
            tokens[r, : len(row)] = torch.tensor(row)
        batch = {k: v[None].expand(len(qs), *v.shape).to(self.device) for k, v in clip.items()}
        logits, _ = self({**batch, "tokens": tokens.to(self.device)})
        out = [self.answers[int(i)] for i in logits.argmax(-1)]
        return out[0] if isinstance(questions, str) else out
