"""A CLIP-style dual encoder: images and captions in one L2-normalized embedding space.

image (B, 3, H, W) -> any registered image encoder -> regions (B, N, C) -> attention or mean pool
-> linear -> L2 norm -> (B, E);  text -> a text tower (`text_encoders`) -> linear -> L2 norm -> (B, E).
Trained with a symmetric InfoNCE loss (Radford et al. 2021, sec. 2.3) whose temperature is learned
(`logit_scale`, clamped at 100 as in OpenCLIP), optionally with hard negatives. The narrow API is
OpenCLIP's: `encode_image`, `encode_text`, `logit_scale`.

Example:
    A tiny untrained model (a trained one: `polymodal.load("runs/contrastive/model")`):

    >>> from PIL import Image
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> texts = ["a red circle above a blue square", "two green stars"]
    >>> cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, embed_dim=16,
    ...                         text=TextEncoderConfig(width=16, layers=1, heads=2))
    >>> model = DualEncoder(cfg, WordTokenizer.build(texts))
    >>> img = model.embed_images([Image.new("RGB", (40, 40), "red")])  # paths, bytes, PIL images or tensors
    >>> txt = model.embed_texts(texts)
    >>> img.shape, txt.shape, (img @ txt.T).softmax(-1).shape  # unit vectors: img @ txt.T are cosines
    (torch.Size([1, 16]), torch.Size([2, 16]), torch.Size([1, 2]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import (
    save_tensors,
)
from ..config import EncoderConfig, from_dict
from ..data.images import images_to_batch
from ..errors import ConfigError, InputError
from ..nn.clip import CLIPVisionConfig, CLIPVisionTower
from ..nn.encoders import build_encoder
from ..nn.text_encoders import TextEncoderConfig, build_text_encoder
from ..text.tokenizer import Tokenizer
from .base import SavedModel, forget_initial_weights
from .captioner import ImageInput


@dataclass
class ContrastiveLossConfig:
    hard_negatives: str = "none"      # none | weighted (Robinson et al. 2021) | hardest (VSE++, Faghri et al. 2018)
    beta: float = 0.5                 # weighted: negatives re-weighted by exp(beta * logit), mean weight 1
    hard_weight: float = 0.5          # hardest: weight of the hinge on the hardest in-batch negative
    margin: float = 0.2               # hardest: cosine margin of that hinge
    # NegCLIP-style hard negative captions (text.perturb): groups of interchangeable words (colours,
    # object names, counts, ...) swapped or replaced within a caption; [] = none
    negative_words: list[list[str]] = field(default_factory=list)
    negative_swap: float = 0.5        # chance of a swap (binding) rather than a replacement, when both apply


@dataclass
class DualEncoderConfig:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(name="small_cnn", width=16))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_size: int = 48
    embed_dim: int = 128              # width of the shared space
    pooling: str = "attention"        # attention (CLIP's AttentionPool2d) | mean | cls (first token: a ViT's class token)
    pool_heads: int = 4
    text_mlp: int = 0                 # hidden width of an MLP text head (0 = linear); helps a frozen text tower
    init_temperature: float = 0.07    # CLIP's initial temperature; logit_scale = log(1 / T)
    max_logit_scale: float = 100.0    # OpenCLIP clamps exp(logit_scale) here so training stays stable
    loss: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    proj_bias: bool = True            # False for CLIP's bias-free projections
    vit: CLIPVisionConfig | None = None  # a CLIP vision transformer instead of `encoder` (docs/pretrained.md)


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over a batch of pairs; returns named terms and their sum under "loss".

    `positives[i, j]` is True when text j describes image i (its own caption, another caption of
    the same image, or an identical caption of another image). Such duplicates are not negatives:
    the loss is -log of the probability of the positive set, so it never pushes a true pair apart.

    Example:
        >>> loss = ContrastiveLoss(ContrastiveLossConfig())
        >>> e = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss(e, e, torch.tensor(10.0))["contrastive_loss"].item() < 1.4  # log(4) is chance
        True
    """

    def __init__(self, cfg: ContrastiveLossConfig):
        super().__init__()
        if cfg.hard_negatives not in ("none", "weighted", "hardest"):
            raise ConfigError(f"model.loss.hard_negatives={cfg.hard_negatives!r}: use none, weighted or hardest")
        self.cfg = cfg

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                positives: torch.Tensor | None = None, negatives: torch.Tensor | None = None,
                negative_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`negatives` (B, E): one hard negative caption per pair (False in `negative_valid`: none), extra
        candidates of the image -> text direction for every image of the batch (NegCLIP)."""
        sim = image.float() @ text.float().T  # (B, B) cosine similarities
        pos = positives if positives is not None else torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        logits = logit_scale * sim
        i2t, i2t_pos = logits, pos
        if negatives is not None:
            extra = (logit_scale * image.float() @ negatives.float().T)
            if negative_valid is not None:
                extra = extra.masked_fill(~negative_valid[None, :], -math.inf)
            i2t, i2t_pos = torch.cat([logits, extra], 1), torch.cat([pos, torch.zeros_like(pos)], 1)
        terms = {"contrastive_loss": 0.5 * (self._infonce(i2t, i2t_pos) + self._infonce(logits.T, pos.T))}
        if self.cfg.hard_negatives == "hardest":
            terms["hard_negative_loss"] = self.cfg.hard_weight * 0.5 * (
                self._hinge(sim, pos) + self._hinge(sim.T, pos.T))
        terms["loss"] = sum(terms.values())
        return terms

    def _infonce(self, logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.cfg.hard_negatives == "weighted":
            # Importance weights w_j = n * softmax(beta * s_j) over the negatives (mean 1), added in
            # log space and detached: harder negatives count more in the denominator.
            neg_logits = (self.cfg.beta * logits.detach()).masked_fill(pos, -math.inf)
            n_neg = (~pos).sum(-1, keepdim=True).clamp_min(1)
            log_w = neg_logits.log_softmax(-1) + n_neg.log()
            logits = logits + log_w.masked_fill(pos, 0.0)
        # -log P(any positive): with one positive per row this is the usual cross-entropy; with several
        # (duplicates) the model may put the mass on any of them instead of splitting it evenly.
        return (logits.logsumexp(-1) - logits.masked_fill(~pos, -math.inf).logsumexp(-1)).mean()

    def _hinge(self, sim: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hardest = sim.masked_fill(pos, -math.inf).max(-1).values  # (B,)
        own = sim.masked_fill(~pos, math.inf).min(-1).values      # the weakest positive
        valid = torch.isfinite(hardest)
        return F.relu(self.cfg.margin + hardest - own)[valid].mean() if bool(valid.any()) else sim.sum() * 0.0


class AttentionPool(nn.Module):
    """CLIP's AttentionPool2d: the mean region, with learned positions, attends over all regions.

    Positions matter here: "left of" and "above" are only visible in where a region is.
    """

    def __init__(self, dim: int, n_regions: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.pool_heads={heads} must divide the encoder width {dim}")
        self.position = nn.Parameter(torch.randn(n_regions + 1, dim) / dim ** 0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([regions.mean(1, keepdim=True), regions], 1) + self.position  # (B, 1 + N, C)
        out, _ = self.attn(x[:, :1], x, x, need_weights=False)
        return out[:, 0]  # (B, C)


class MeanPool(nn.Module):
    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return regions.mean(1)


class ClassTokenPool(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]  # (B, C): the class token a ViT puts first


class DualEncoder(SavedModel, nn.Module):
    """Image tower + text tower projected into one normalized space; see the module docstring."""

    architecture, config_cls, needs_tokenizer = "dual_encoder", DualEncoderConfig, False

    def __init__(self, cfg: DualEncoderConfig, tokenizer: Tokenizer | None, saved_dir: Path | None = None):
        super().__init__()
        if cfg.pooling not in ("attention", "mean", "cls"):
            raise ConfigError(f"model.pooling={cfg.pooling!r}: use attention, mean or cls")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.encoder = CLIPVisionTower(cfg.vit) if cfg.vit is not None else build_encoder(cfg.encoder)
        c = self.encoder.out_dim
        self.pool = (AttentionPool(c, self._regions(), cfg.pool_heads) if cfg.pooling == "attention"
                     else ClassTokenPool() if cfg.pooling == "cls" else MeanPool())
        self.image_proj = nn.Linear(c, cfg.embed_dim, bias=cfg.proj_bias)
        self.text = build_text_encoder(cfg.text, tokenizer, saved_dir)
        d = self.text.out_dim
        self.text_proj = nn.Linear(d, cfg.embed_dim, bias=cfg.proj_bias) if not cfg.text_mlp else nn.Sequential(
            nn.Linear(d, cfg.text_mlp), nn.GELU(), nn.Linear(cfg.text_mlp, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.loss = ContrastiveLoss(cfg.loss)

    def _regions(self) -> int:
        """Regions per image at `image_size`, from one dry run (eval mode: BatchNorm statistics stay put)."""
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            n = self.encoder(torch.zeros(1, 3, self.cfg.image_size, self.cfg.image_size)).shape[1]
        self.encoder.train(was_training)
        return n

    # ---- the OpenCLIP API --------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Normalized images (B, 3, S, S) -> embeddings (B, E), unit length unless `normalize=False`."""
        return self.encode_image_features(self.encoder(images), normalize)

    def encode_image_features(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Encoder region features (B, N, C), e.g. from the feature cache -> embeddings (B, E)."""
        x = self.image_proj(self.pool(features))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Token ids from `tokenize` (B, T) -> embeddings (B, E), unit length unless `normalize=False`."""
        x = self.text_proj(self.text(text_ids))
        return F.normalize(x, dim=-1) if normalize else x

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> padded ids (B, T) for `encode_text` (the text tower's own tokenizer)."""
        return self.text.tokenize(list(texts))

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at `max_logit_scale` (no gradient beyond it)."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: "images" (B, 3, S, S), "text_ids" (B, T), optional "record" (B,) image index of each
        pair. Returns the image-to-text logits (B, B) and the named loss terms."""
        image, text = self.encode_image(batch["images"]), self.encode_text(batch["text_ids"])
        positives = same_pair(batch["text_ids"], batch.get("record"))
        scale = self.scale()
        negatives = self.encode_text(batch["negative_ids"]) if "negative_ids" in batch else None
        valid = batch.get("negative_valid")
        losses = self.loss(image, text, scale, positives, negatives, valid)
        # logged, not optimized: "loss" is the sum of the real terms
        losses["logit_scale"] = scale.detach()
        if negatives is not None and valid is not None and bool(valid.any()):
            own, negative = (image * text).sum(-1), (image * negatives).sum(-1)
            losses["negative_caption_accuracy"] = (own > negative)[valid].float().mean().detach()
        return scale * image @ text.T, losses

    # ---- inference ---------------------------------------------------------------------------
    def preprocess(self, images: list[ImageInput] | ImageInput) -> torch.Tensor:
        """Paths, bytes, PIL images or normalized (3, H, W) tensors -> one batch (B, 3, S, S)."""
        return images_to_batch(images, self.cfg.image_size, self.device)

    @torch.inference_mode()
    def embed_images(self, images: list[ImageInput] | ImageInput, batch_size: int = 256) -> torch.Tensor:
        """Unit embeddings (N, E) of images (paths, bytes, PIL images or normalized tensors), on the CPU."""
        self.eval()
        items = images if isinstance(images, (list, tuple)) else [images]
        return torch.cat([self.encode_image(self.preprocess(list(items[i:i + batch_size]))).float().cpu()
                          for i in range(0, len(items), batch_size)] or [torch.zeros(0, self.cfg.embed_dim)])

    @torch.inference_mode()
    def embed_texts(self, texts: list[str] | str, batch_size: int = 512) -> torch.Tensor:
        """Unit embeddings (N, E) of texts, on the CPU.

        Example:
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> tokenizer = WordTokenizer.build(["a red circle", "a blue square"])
            >>> model = DualEncoder(DualEncoderConfig(), tokenizer)  # untrained
            >>> model.embed_texts(["a red circle", "a blue square"]).shape  # (texts, embed_dim)
            torch.Size([2, 128])
        """
        self.eval()
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise InputError("texts must be non-empty strings, e.g. 'a red circle above a blue square'")
        return torch.cat([self.encode_text(self.tokenize(items[i:i + batch_size]).to(self.device)).float().cpu()
                          for i in range(0, len(items), batch_size)])

    # ---- transfer ----------------------------------------------------------------------------
    def export_image_encoder(self, path: str | Path) -> Path:
        """Write the image tower's state dict as safetensors, for `model.encoder.pretrained=PATH`.

        Example:
            >>> import tempfile
            >>> from polymodal.nn.encoders import build_encoder
            >>> from polymodal.text.tokenizer import WordTokenizer
            >>> model = DualEncoder(DualEncoderConfig(), WordTokenizer.build(["a red circle"]))
            >>> tmp = tempfile.TemporaryDirectory()
            >>> path = model.export_image_encoder(f"{tmp.name}/image_encoder.safetensors")
            >>> encoder = build_encoder(EncoderConfig(name="small_cnn", width=16, pretrained=str(path)))
            >>> mine, exported = encoder.state_dict(), model.encoder.state_dict()
            >>> all(torch.equal(mine[key], exported[key]) for key in exported)
            True
            >>> tmp.cleanup()
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, self.encoder.state_dict())
        return path

    # ---- checkpoints -------------------------------------------------------------------------
    def write_files(self, folder: Path) -> None:
        """config.json, tokenizer.json (word towers), model.safetensors and, for hf_bert, text_tower/."""
        super().write_files(folder)
        if hasattr(self.text, "save_extra"):
            self.text.save_extra(Path(folder))

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None,
                    source: str = "config.json") -> DualEncoder:
        """An untrained model; a Hugging Face text tower is read from the save's folder (`source`'s parent)."""
        cfg = from_dict(DualEncoderConfig, config.get("model", {}), f"{source}:model")
        forget_initial_weights(cfg)
        return cls(cfg, tokenizer, saved_dir=Path(source).parent)


def same_pair(text_ids: torch.Tensor, record: torch.Tensor | None) -> torch.Tensor:
    """(B, B) True where pair j's caption also describes pair i's image: same image or identical text."""
    same_text = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)
    if record is None:
        return same_text | torch.eye(len(text_ids), dtype=torch.bool, device=text_ids.device)
    return same_text | (record[:, None] == record[None, :])
