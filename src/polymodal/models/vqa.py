"""Visual question answering as classification over an answer vocabulary.

image -> encoder regions (B, N, C) -> + position -> "image" (B, N, D)
question -> embedding + BiLSTM / transformer -> "text" (B, T, D)
{"image", "text"} -> fusion (any `registry.FUSION` variant) -> answer classifier (B, A)

Decision-level fusion variants bring their own per-modality classifier heads; each head is also
trained on its own (the mean of their losses is added), as late fusion of separate classifiers is.

Probabilities are calibrated: softmax(logits / temperature), with the temperature that training fits on
the validation split (saved in config.json's "calibration"; 1 for older saves). An answer below
`cfg.confidence` is "not sure" (`confident`); docs/calibration.md.

Example:
    A trained model (`polymodal train configs/vqa.yaml` writes runs/vqa):

    >>> model = polymodal.load("runs/vqa/model")  # doctest: +SKIP
    >>> model.answer("shapes/images/test/test_000000.png", "what colour is the circle?")  # doctest: +SKIP
    ['red']

    An untrained one, built from its config:

    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tokenizer = WordTokenizer.build(["what colour is the circle?"])
    >>> model = VQAModel(VQAModelConfig(image_size=32), tokenizer, answers=["red", "blue"])
    >>> model.predict(Image.new("RGB", (32, 32)), "what colour is the circle?").shape  # (questions, answers)
    torch.Size([1, 2])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..config import EncoderConfig
from ..data.images import images_to_batch
from ..data.qa import encode_text
from ..errors import CheckpointError, ConfigError, InputError
from ..nn.encoders import build_encoder
from ..nn.fusion.base import FusionConfig, build_fusion
from ..nn.question import QuestionEncoderConfig
from ..registry import QUESTION_ENCODERS
from ..text.tokenizer import Tokenizer
from .base import SavedAnswerModel

ImageInput = str | Path | bytes | Image.Image | torch.Tensor


@dataclass
class VQAModelConfig:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(name="small_cnn", width=16))
    question: QuestionEncoderConfig = field(default_factory=QuestionEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    image_size: int = 64
    dim: int = 128                    # width of projected image regions
    dropout: float = 0.1
    objects: int = 0                  # > 0: fuse only the k regions most likely to hold an object's centre
                                      # (bottom-up attention); 0 = every region
    confidence: float = 0.5           # an answer whose calibrated probability is below this is flagged "not sure"
                                      # (the CLI says so, the API returns "confident": false); docs/calibration.md

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ConfigError(f"model.confidence must be a probability in [0, 1] (got {self.confidence}); "
                              f"e.g. model.confidence=0.5")


def grid_positions(n: int, device: torch.device, bands: int = 4) -> torch.Tensor:
    """Fourier features of the (x, y) centre of each of n = side * side grid cells: (n, 2 + 4 * bands).

    Regions carry no position of their own; "left of" and "above" need one.
    """
    side = math.isqrt(n)
    if side * side != n:  # not a square grid: number the regions along one axis
        xs, ys = torch.linspace(-1, 1, n, device=device), torch.zeros(n, device=device)
    else:
        axis = (torch.arange(side, device=device) + 0.5) / side * 2 - 1
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        xs, ys = xs.reshape(-1), ys.reshape(-1)
    freqs = math.pi * 2.0 ** torch.arange(bands, device=device)
    parts = [xs[:, None], ys[:, None]]
    for c in (xs, ys):
        parts += [torch.sin(c[:, None] * freqs), torch.cos(c[:, None] * freqs)]
    return torch.cat(parts, dim=-1)


class RegionProjector(nn.Module):
    """Encoder regions (B, N, C) -> (B, N, D): normalised, a linear map plus a projected grid position.

    The input LayerNorm makes encoders of any feature scale (a ResNet, a frozen random CNN) look alike.
    """

    def __init__(self, feature_dim: int, dim: int, bands: int = 4):
        super().__init__()
        self.bands = bands
        self.proj = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, dim))
        self.position = nn.Linear(2 + 4 * bands, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        pos = grid_positions(regions.shape[1], regions.device, self.bands).to(regions.dtype)
        return self.norm(self.proj(regions) + self.position(pos))


def pair_up(images: Any, questions: list[Any], what: str = "questions") -> tuple[list[Any], list[Any]]:
    """One image per question: a single image is asked every question, a single question asked of every image.

    Example:
        >>> pair_up("a.png", ["q1", "q2"])
        (['a.png', 'a.png'], ['q1', 'q2'])
    """
    imgs = list(images) if isinstance(images, (list, tuple)) else [images]
    if not questions:
        raise InputError(f"no {what} given")
    if len(imgs) == 1 and len(questions) > 1:
        imgs = imgs * len(questions)  # several questions about one image: encode the image once per question
    elif len(questions) == 1 and len(imgs) > 1:
        questions = questions * len(imgs)
    if len(imgs) != len(questions):
        raise InputError(f"{len(imgs)} images but {len(questions)} {what}; pass one image per question, "
                         f"or one image for all")
    return imgs, questions


class VQAModel(SavedAnswerModel, nn.Module):
    """Answers questions about images by picking from a fixed answer vocabulary."""

    architecture, config_cls = "vqa", VQAModelConfig

    def __init__(self, cfg: VQAModelConfig, tokenizer: Tokenizer, answers: list[str]):
        super().__init__()
        if not answers:
            raise CheckpointError("a VQA model needs a non-empty answer vocabulary")
        self.cfg, self.tokenizer, self.answers = cfg, tokenizer, list(answers)
        # Temperature scaling (eval/calibration.py): logits / T before the softmax. Training fits T on the
        # validation split and saves it in config.json's "calibration" section; 1.0 = uncalibrated.
        self.temperature = 1.0
        self.encoder = build_encoder(cfg.encoder)
        self.image_proj = RegionProjector(self.encoder.out_dim, cfg.dim)
        # Objectness of each region (C -> [no centre, centre]); the region pretraining's head when there is one.
        self.objectness = nn.Linear(self.encoder.out_dim, 2) if cfg.objects > 0 else None
        self.object_embed = nn.Parameter(torch.zeros(cfg.dim)) if cfg.objects > 0 else None
        self.question = self.build_question(cfg, tokenizer)
        dims = {"image": cfg.dim, "text": self.question.out_dim}
        if cfg.objects > 0 and cfg.fusion.name == "relation":
            raise ConfigError("model.objects > 0 does not work with fusion 'relation' (it reads grid positions from "
                              "the order of the regions); set model.objects=0 or pick another fusion")
        self.fusion = build_fusion(cfg.fusion, dims, num_classes=len(self.answers))
        self.decision_level = self.fusion.level == "decision"
        self.classifier = None if self.decision_level else nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(self.fusion.out_dim, len(self.answers)))

    def build_question(self, cfg: VQAModelConfig, tokenizer: Tokenizer) -> nn.Module:
        """The question encoder (its `out_dim` is the fusion's "text" width); models/spoken_vqa.py hears it instead."""
        return QUESTION_ENCODERS.build(cfg.question.name, cfg.question, len(tokenizer))

    def image_tokens(self, regions: torch.Tensor) -> torch.Tensor:
        """Raw encoder regions (B, N, C) -> projected image tokens with their positions (B, N or k, D).

        With `objects=k`, the k regions most likely to hold an object's centre (a detector's proposals, in
        the bottom-up-attention sense); each carries its probability, so the fusion can still count and
        ignore a proposal on the background.
        """
        tokens = self.image_proj(regions)
        if self.objectness is None:
            return tokens
        p = self.objectness(regions).float().softmax(-1)[..., 1]  # (B, N)
        score, top = p.topk(min(self.cfg.objects, p.shape[1]), dim=1)  # (B, k) each
        picked = tokens.gather(1, top.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return picked + score.unsqueeze(-1).to(picked.dtype) * self.object_embed

    def fused_logits(self, regions: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Raw encoder regions (B, N, C) and question ids (B, T) -> answer scores (B, A), head scores."""
        return self.fuse(regions, *self.question(tokens))

    def fuse(self, regions: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Raw encoder regions (B, N, C) and question features (B, T, D) with their mask (B, T) -> answer scores
        (B, A) and, for decision-level fusion, each modality's head scores."""
        features, masks = {"image": self.image_tokens(regions), "text": text}, {"text": mask}
        if self.decision_level:
            heads = self.fusion.head_logits(features, masks)
            return self.fusion.combine(heads), heads
        return self.classifier(self.fusion(features, masks)), {}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: "images" (B, 3, H, W) or precomputed "image_features" (B, N, C), "tokens" (B, T) question
        ids, and for a loss "targets" (B, A) soft answer scores. Returns logits (B, A) and named losses."""
        regions = batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])
        logits, heads = self.fused_logits(regions, batch["tokens"])
        return logits, self.losses(logits, heads, batch)

    def losses(self, logits: torch.Tensor, heads: dict, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named losses against batch["targets"] (none without them); "loss" is their sum."""
        losses: dict[str, torch.Tensor] = {}
        if "targets" in batch:
            losses["answer_loss"] = soft_cross_entropy(logits, batch["targets"])
            if heads:  # late fusion: every modality's classifier also learns on its own
                losses["head_loss"] = sum(soft_cross_entropy(h, batch["targets"]) for h in heads.values()) / len(heads)
            losses["loss"] = sum(losses.values())
        return losses

    # ---- save / load: the fitted temperature rides in config.json ------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "calibration": {"temperature": self.temperature}}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None, source: str = "config.json") -> Any:
        """As SavedAnswerModel's, plus the temperature; a model saved before calibration gets T = 1."""
        model = super().from_config(config, tokenizer, source)
        calibration = config.get("calibration") or {}
        t = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise CheckpointError(f"{source}: 'calibration.temperature' must be a positive number (got {t!r}); "
                                  f"remove the 'calibration' section to answer uncalibrated, or re-train")
        model.temperature = float(t)
        return model

    # ---- inference ---------------------------------------------------------------------------
    def preprocess(self, images: Any) -> torch.Tensor:
        """Paths, bytes, PIL images or tensors -> one normalised batch (B, 3, S, S) (also for eval/ood.py)."""
        return images_to_batch(images, self.cfg.image_size, self.device)

    def confident(self, probability: float) -> bool:
        """Whether an answer given with this (calibrated) probability is above `cfg.confidence`.

        Example:
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> model = VQAModel(VQAModelConfig(image_size=32, confidence=0.5), WordTokenizer.build(["q"]), ["a"])
            >>> model.confident(0.31), model.confident(0.8)
            (False, True)
        """
        return probability >= self.cfg.confidence

    def _pairs(self, images: Any, questions: Any) -> tuple[list[Any], list[str]]:
        return pair_up(images, [questions] if isinstance(questions, str) else list(questions), "questions")

    @torch.inference_mode()
    def predict(self, images: Any, questions: Any) -> torch.Tensor:
        """Calibrated answer probabilities (B, A), softmax(logits / temperature), for images and questions."""
        self.eval()
        imgs, qs = self._pairs(images, questions)
        ids = [encode_text(self.tokenizer, q, self.cfg.question.max_len) for q in qs]
        tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for r, row in enumerate(ids):
            tokens[r, : len(row)] = torch.tensor(row)
        logits, _ = self({"images": self.preprocess(imgs), "tokens": tokens.to(self.device)})
        return (logits.float() / self.temperature).softmax(-1)

    def answer(self, images: Any, questions: Any) -> list[str]:
        """The best answer to each question.

        Args:
            images: one image (path, bytes, PIL image, normalised tensor) or a list, one per question.
            questions: one question or a list; one image with several questions asks them all of it.

        Raises:
            InputError: empty question, no words, or mismatched numbers of images and questions.

        Example:
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> questions = ["how many shapes are there?", "is there a red star?"]
            >>> tokenizer = WordTokenizer.build(questions)
            >>> model = VQAModel(VQAModelConfig(image_size=32), tokenizer, ["no", "yes", "three"])
            >>> answers = model.answer(Image.new("RGB", (32, 32)), questions)  # untrained: any of its answers
            >>> len(answers), set(answers) <= {"no", "yes", "three"}
            (2, True)
        """
        return [self.answers[int(i)] for i in self.predict(images, questions).argmax(-1)]

    def answer_topk(self, images: Any, questions: Any, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most likely answers to each question with their calibrated probabilities, best first.

        Example:
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> question = "what colour is the star?"
            >>> tokenizer = WordTokenizer.build([question])
            >>> model = VQAModel(VQAModelConfig(image_size=32), tokenizer, ["red", "orange", "blue"])
            >>> top = model.answer_topk(Image.new("RGB", (32, 32)), question, k=2)[0]  # untrained: any two
            >>> len(top), top[0][1] >= top[1][1], {answer for answer, _ in top} <= {"red", "orange", "blue"}
            (2, True, True)
        """
        probs = self.predict(images, questions)
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [[(self.answers[int(i)], float(p)) for p, i in zip(ps, ix, strict=True)]
                for ps, ix in zip(top.values, top.indices, strict=True)]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft target scores (rows normalised to sum 1; all-zero rows ignored)."""
    totals = targets.sum(-1, keepdim=True)
    keep = totals.squeeze(-1) > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    p = targets[keep] / totals[keep]
    return -(p * logits[keep].float().log_softmax(-1)).sum(-1).mean()
