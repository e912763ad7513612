"""Image captioner: an image encoder + a caption decoder, trained with teacher forcing.

Example:
    >>> import polymodal
    >>> model = polymodal.load("runs/attention_lstm/model")  # doctest: +SKIP
    >>> model.caption(["shapes/images/test/test_000001.png"])  # doctest: +SKIP
    ['a small red circle to the left of a large blue square']
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..checkpoint import load_weights, read_model_dir, resolve_model_dir, save_model_dir, write_model_files
from ..config import ModelConfig, from_dict
from ..data.images import image_to_tensor, load_image
from ..errors import CheckpointError, InputError
from ..generate import GenerationConfig, Hypothesis, generate
from ..registry import MODELS
from ..text.tokenizer import Tokenizer
from .decoders import build_decoder
from .encoders import build_encoder

ImageInput = str | Path | bytes | Image.Image | torch.Tensor


@MODELS.register("captioner")
class Captioner(nn.Module):
    """encoder (B, 3, H, W) -> regions (B, N, C) -> decoder -> caption logits."""

    architecture = "captioner"

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoder = build_encoder(cfg.encoder)
        self.decoder = build_decoder(cfg.decoder, self.encoder.out_dim, len(tokenizer))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. batch: images (B, 3, H, W), tokens (B, L) = <bos> words <eos> <pad>..."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits, aux = self.decoder(self.encode(batch), inputs)
        losses = {"caption_loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                  targets.reshape(-1), ignore_index=self.tokenizer.pad_id)}
        losses.update(aux["losses"])
        losses["loss"] = sum(losses.values())
        return logits, losses

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Region features (B, N, C): the batch's cached `image_features` if it has them, else encoded images."""
        return batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Captions for a batch of normalized images; per image, hypotheses best first."""
        return self.generate_from_features(self.encoder(images), cfg)

    @torch.inference_mode()
    def generate_from_features(self, features: torch.Tensor,
                               cfg: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Captions from region features (B, N, C), e.g. a feature cache's; hypotheses best first."""
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        state = self.decoder.init_state(features)
        tok = self.tokenizer
        return generate(self.decoder.step, state, tok.bos_id, tok.eos_id, cfg, suppress_ids=(tok.pad_id,))

    def preprocess(self, images: list[ImageInput] | ImageInput) -> torch.Tensor:
        """Paths, bytes, PIL images or tensors -> one normalized batch (B, 3, S, S)."""
        items = images if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InputError("no images given; pass at least one image path, PIL image or tensor")
        size = self.cfg.image_size
        tensors = []
        for item in items:
            if isinstance(item, torch.Tensor):
                if item.ndim != 3 or item.shape[0] != 3:
                    raise InputError(f"image tensor must be (3, H, W) and normalized, got {tuple(item.shape)}")
                tensors.append(F.interpolate(item[None].float(), size=(size, size), mode="bilinear",
                                             antialias=True, align_corners=False)[0])
            else:
                tensors.append(image_to_tensor(load_image(item), size))
        return torch.stack(tensors).to(self.device)

    def caption(self, images: list[ImageInput] | ImageInput, **generation: Any) -> list[str]:
        """Best caption for each image. `generation` keys are GenerationConfig fields (beam_size=5, ...)."""
        return [hyps[0] for hyps in self.caption_nbest(images, **generation)]

    def caption_nbest(self, images: list[ImageInput] | ImageInput, **generation: Any) -> list[list[str]]:
        generation.setdefault("max_len", self.cfg.decoder.max_len)
        self.eval()
        hyps = self.generate(self.preprocess(images), GenerationConfig(**generation))
        return [[self.tokenizer.decode(h.tokens) for h in per_image] for per_image in hyps]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def config_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "model": dataclasses.asdict(self.cfg)}

    def write_files(self, folder: Path) -> None:
        """Write config.json, tokenizer.json and model.safetensors into an existing folder."""
        write_model_files(Path(folder), self.config_dict(), self, self.tokenizer)

    def save_pretrained(self, path: str | Path) -> Path:
        return save_model_dir(path, self.config_dict(), self, self.tokenizer)

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer, source: str = "config.json") -> Captioner:
        """Build an untrained model from a saved config.json (subclasses add their own sections)."""
        cfg = from_dict(ModelConfig, config["model"], f"{source}:model")
        cfg.encoder.pretrained = None  # the saved weights replace any initial weights
        return cls(cfg, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Captioner:
        path = resolve_model_dir(path)
        config, tokenizer = read_model_dir(path)
        if tokenizer is None:
            raise CheckpointError(f"{path}: tokenizer.json missing; a captioner needs its vocabulary: "
                                  f"copy it from the same save, or re-train")
        with warnings.catch_warnings():  # no "random init" warning: the weights come next
            warnings.simplefilter("ignore")
            model = cls.from_config(config, tokenizer, f"{path}/config.json")
        load_weights(model, path)
        return model.eval()
