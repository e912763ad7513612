"""A ViT / SigLIP vision tower read from a local Hugging Face folder, as an image encoder (`hf_vision`).

Both are pre-norm ViTs (Dosovitskiy et al. 2021): patch convolution + learned positions, blocks of
LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual, a final LayerNorm. They differ in
small things, read from config.json: ViT (`model_type: vit`) has a class token and exact GELU,
SigLIP (`siglip_vision_model`, or the vision half of a `siglip` folder) has no class token and
tanh GELU. The encoder returns the patch tokens of the last hidden state as regions (B, N, C) on
the patch grid (the class token is dropped), for the prefix LM's projector.

Images reach every polymodal encoder normalized with ImageNet's mean and std; the tower converts
them to its own normalization (preprocessor_config.json's `image_mean`/`image_std`, else 0.5/0.5
as both families use). At the tower's `image_size` it computes exactly what HF computes; at other
sizes (64 px Shapes World) its position table is resized bicubically to the patch grid.

Stages (`fine_tune_last_n`, `freeze`): the embeddings, each block, the final norm. The architecture
is kept in `dims` and saved with a model (the prefix LM's `prefix.vision`), so a saved model reloads
without the original folder.

Example:
    >>> dims = VisionTowerDims(kind="siglip", hidden_dim=32, num_layers=2, num_heads=4, intermediate_size=64,
    ...                        patch_size=8, image_size=32)
    >>> tower = HFVisionEncoder(EncoderConfig(name="hf_vision", freeze=True), dims)
    >>> tower(torch.randn(2, 3, 32, 32)).shape  # 4 x 4 patches of width 32
    torch.Size([2, 16, 32])
    >>> sorted(vision_key_map(dims))[:2]
    ['embeddings.patch_embedding.bias', 'embeddings.patch_embedding.weight']
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ConfigError, InputError
from .encoders import ImageEncoder
from .hf_folder import load_mapped, read_config, read_weights

_ACTS = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}  # HF name -> F.gelu approximate
_KINDS = {"vit": "vit", "siglip_vision_model": "siglip", "siglip": "siglip"}


@dataclass
class VisionTowerDims:
    """The architecture of a ViT / SigLIP tower, as read from its config.json (saved with the model)."""

    kind: str = "vit"                  # vit (class token) | siglip (none)
    hidden_dim: int = 0
    num_layers: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    patch_size: int = 16
    image_size: int = 224
    layer_norm_eps: float = 1e-6
    hidden_act: str = ""               # "" = the family's own: gelu (ViT), gelu_pytorch_tanh (SigLIP)
    qkv_bias: bool = True
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self) -> None:
        if self.kind not in ("vit", "siglip"):
            raise ConfigError(f"vision tower kind {self.kind!r}: expected vit or siglip")
        self.hidden_act = self.hidden_act or ("gelu" if self.kind == "vit" else "gelu_pytorch_tanh")
        if self.hidden_act not in _ACTS:
            raise ConfigError(f"hidden_act={self.hidden_act!r} is not supported (one of {sorted(_ACTS)})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionEmbeddings(nn.Module):
    """Patches (B, N, D) with learned positions; ViT puts a class token first."""

    def __init__(self, d: VisionTowerDims):
        super().__init__()
        self.patch = nn.Conv2d(3, d.hidden_dim, d.patch_size, d.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d.hidden_dim)) if d.kind == "vit" else None
        self.pos = nn.Parameter(torch.randn(d.num_patches + (d.kind == "vit"), d.hidden_dim) * 0.02)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w patch grid: the trained table, or bicubically resized to the grid
        (as HF's `interpolate_pos_encoding`) when the images are not the tower's `image_size`."""
        n_cls = int(self.cls is not None)
        patches = self.pos[n_cls:]
        side = math.isqrt(patches.shape[0])
        if (h, w) == (side, side):
            return self.pos
        grid = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(patches.dtype)
        return torch.cat([self.pos[:n_cls], grid.flatten(2)[0].T], dim=0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if min(pixels.shape[-2:]) < self.patch.kernel_size[0]:
            raise InputError(f"images of {tuple(pixels.shape[-2:])} px are smaller than one "
                             f"{self.patch.kernel_size[0]} px patch; raise model.image_size")
        fmap = self.patch(pixels)  # (B, D, h, w)
        x = fmap.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        return x + self.positions(*fmap.shape[-2:])


class VisionBlock(nn.Module):
    def __init__(self, d: VisionTowerDims):
        super().__init__()
        self.heads, self.approximate = d.num_heads, _ACTS[d.hidden_act]
        self.ln1, self.ln2 = nn.LayerNorm(d.hidden_dim, d.layer_norm_eps), nn.LayerNorm(d.hidden_dim, d.layer_norm_eps)
        self.q, self.k, self.v = (nn.Linear(d.hidden_dim, d.hidden_dim, bias=d.qkv_bias) for _ in range(3))
        self.o = nn.Linear(d.hidden_dim, d.hidden_dim)
        self.fc1, self.fc2 = nn.Linear(d.hidden_dim, d.intermediate_size), nn.Linear(d.intermediate_size, d.hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(b, t, self.heads, dim // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))  # bidirectional
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate=self.approximate))


class HFVisionEncoder(ImageEncoder):
    """A ViT / SigLIP tower: from `cfg.pretrained` (a local HF folder) with its weights, or from `dims`."""

    def __init__(self, cfg: EncoderConfig, dims: VisionTowerDims | None = None):
        super().__init__(cfg)
        if dims is None and not cfg.pretrained:
            warnings.warn("hf_vision: no pretrained folder given, starting a small SigLIP-layout tower from random "
                          "init (set model.encoder.pretrained=FOLDER, a local ViT or SigLIP folder)", stacklevel=2)
            dims = VisionTowerDims(kind="siglip", hidden_dim=4 * cfg.width, num_layers=2, num_heads=4,
                                   intermediate_size=16 * cfg.width, patch_size=8, image_size=64)
        self.dims = d = dims if dims is not None else read_vision_config(cfg.pretrained)
        self.out_dim = d.hidden_dim
        self.stages = nn.ModuleList([VisionEmbeddings(d), *(VisionBlock(d) for _ in range(d.num_layers)),
                                     nn.LayerNorm(d.hidden_dim, d.layer_norm_eps)])
        # ImageNet-normalized input -> the tower's normalization: x * scale + shift, per channel.
        mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean, std = torch.tensor(d.image_mean), torch.tensor(d.image_std)
        self.register_buffer("scale", (std_in / std).view(3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in - mean) / std).view(3, 1, 1), persistent=False)
        if cfg.pretrained:
            load_vision_tower(self, cfg.pretrained)
        self.apply_trainability()

    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in the tower's own normalization (B, 3, S, S) -> last hidden state (B, [1 +] N, D), as HF's."""
        x = self.stages[0](pixels)
        for block in self.stages[1:-1]:
            x = block(x)
        return self.stages[-1](x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(images * self.scale + self.shift)
        x = x[:, 1:] if self.dims.kind == "vit" else x  # the class token is not a region
        h, w = images.shape[-2] // self.dims.patch_size, images.shape[-1] // self.dims.patch_size
        return x.transpose(1, 2).reshape(len(x), x.shape[2], h, w)  # (B, C, h, w)


def hf_vision(cfg: EncoderConfig) -> ImageEncoder:
    return HFVisionEncoder(cfg)


# ---- the Hugging Face folder --------------------------------------------------------------------
_VIT_LAYER = {"layernorm_before": "ln1", "layernorm_after": "ln2", "attention.attention.query": "q",
              "attention.attention.key": "k", "attention.attention.value": "v", "attention.output.dense": "o",
              "intermediate.dense": "fc1", "output.dense": "fc2"}
_SIGLIP_LAYER = {"layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.q_proj": "q", "self_attn.k_proj": "k",
                 "self_attn.v_proj": "v", "self_attn.out_proj": "o", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
# Parts of the folder the encoder does not use: ViT's pooler / classifier / mask token, SigLIP's
# attention-pooling head and, in a full SigLIP folder, the text tower and the logit scale and bias.
_IGNORED = ("pooler.", "classifier.", "embeddings.mask_token", "head.", "text_model.", "logit_")
_PREFIXES = ("vision_model.", "vit.")  # SiglipModel / older SiglipVisionModel files; ViTForImageClassification


def vision_key_map(d: VisionTowerDims) -> dict[str, str]:
    """Hugging Face key (prefixes removed) -> HFVisionEncoder key, for both families."""
    last = d.num_layers + 1  # the final norm's stage
    if d.kind == "vit":
        mapping = {"embeddings.cls_token": "stages.0.cls", "embeddings.position_embeddings": "stages.0.pos",
                   "embeddings.patch_embeddings.projection.weight": "stages.0.patch.weight",
                   "embeddings.patch_embeddings.projection.bias": "stages.0.patch.bias",
                   "layernorm.weight": f"stages.{last}.weight", "layernorm.bias": f"stages.{last}.bias"}
        layer, names = "encoder.layer", _VIT_LAYER
    else:
        mapping = {"embeddings.position_embedding.weight": "stages.0.pos",
                   "embeddings.patch_embedding.weight": "stages.0.patch.weight",
                   "embeddings.patch_embedding.bias": "stages.0.patch.bias",
                   "post_layernorm.weight": f"stages.{last}.weight", "post_layernorm.bias": f"stages.{last}.bias"}
        layer, names = "encoder.layers", _SIGLIP_LAYER
    for i in range(d.num_layers):
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                if p == "bias" and ours in "qkv" and not d.qkv_bias:
                    continue
                mapping[f"{layer}.{i}.{theirs}.{p}"] = f"stages.{i + 1}.{ours}.{p}"
    return mapping


def read_vision_config(path: str | Path) -> VisionTowerDims:
    """config.json (+ preprocessor_config.json) of a ViT / SigLIP folder -> VisionTowerDims."""
    file, data = read_config(path)
    kind = _KINDS.get(str(data.get("model_type")))
    if kind is None:
        raise CheckpointError(f"{file}: model_type={data.get('model_type')!r} is not a vision tower this encoder "
                              f"reads (one of {sorted(_KINDS)})")
    if data.get("model_type") == "siglip":
        data = data.get("vision_config") or {}
    norm: dict[str, Any] = {}
    if (Path(path) / "preprocessor_config.json").is_file():
        pre = read_config(path, "preprocessor_config.json")[1]
        norm = {k: [float(x) for x in pre[k]] for k in ("image_mean", "image_std") if isinstance(pre.get(k), list)}
    try:
        dims = VisionTowerDims(
            kind=kind, hidden_dim=int(data.get("hidden_size", 768)), num_layers=int(data.get("num_hidden_layers", 12)),
            num_heads=int(data.get("num_attention_heads", 12)), intermediate_size=int(data.get("intermediate_size", 3072)),
            patch_size=int(data.get("patch_size", 16)), image_size=int(data.get("image_size", 224)),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-12 if kind == "vit" else 1e-6)),
            hidden_act=str(data.get("hidden_act", "")), qkv_bias=bool(data.get("qkv_bias", True)), **norm)
    except (TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{file}: not a usable {kind} config ({type(err).__name__}: {err})") from None
    if int(data.get("num_channels", 3)) != 3:
        raise CheckpointError(f"{file}: num_channels={data['num_channels']} is not supported (RGB only)")
    return dims


def load_vision_tower(encoder: HFVisionEncoder, path: str | Path) -> int:
    """Copy a ViT / SigLIP folder's weights into `encoder` through the key map; the tensor count."""
    file, state = Path(path) / "model.safetensors", read_weights(path)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    if encoder.dims.kind == "vit" and "embeddings.position_embeddings" in state:
        state["embeddings.position_embeddings"] = state["embeddings.position_embeddings"].flatten(0, -2)  # (1, N, D)
    return load_mapped(encoder, file, state, vision_key_map(encoder.dims), encoder.dims.kind, _IGNORED)
