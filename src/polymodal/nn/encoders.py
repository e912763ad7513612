"""Image encoders: torchvision ResNets and a small fast CNN, all returning a grid of region features.

Every encoder maps normalized images (B, 3, H, W) to features (B, N, C) with N = grid cells,
and exposes `out_dim` (C). Global features are the mean over N.

Example:
    >>> from polymodal.config import EncoderConfig
    >>> enc = build_encoder(EncoderConfig(name="small_cnn", width=16))
    >>> enc(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 64, 64])
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from ..config import EncoderConfig
from ..errors import CheckpointError
from ..registry import ENCODERS

_WARNED_RANDOM_INIT: set[str] = set()


class ImageEncoder(nn.Module):
    """Base: a sequence of `stages`; `fine_tune_last_n` and `freeze` act on those stages."""

    out_dim: int
    stages: nn.ModuleList

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for stage in self.stages:
            x = stage(x)
        return x  # (B, C, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.forward_features(images)
        if self.cfg.grid:
            fmap = F.adaptive_avg_pool2d(fmap, self.cfg.grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, N, C)

    def apply_trainability(self) -> None:
        """Freeze everything, or all but the last n stages; frozen stages stay in eval mode."""
        n_train = 0 if self.cfg.freeze else self.cfg.fine_tune_last_n
        if n_train < 0:
            return
        for i, stage in enumerate(self.stages):
            trainable = i >= len(self.stages) - n_train
            for p in stage.parameters():
                p.requires_grad_(trainable)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        for stage in self.stages:  # BatchNorm statistics of frozen stages must not drift
            if not any(p.requires_grad for p in stage.parameters()):
                stage.eval()
        return self


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(ImageEncoder):
    """A fast CNN for low-resolution data: stride 8, channels width -> 4 * width."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        w = cfg.width
        self.stages = nn.ModuleList([
            _conv_bn(3, w, 1),
            nn.Sequential(_conv_bn(w, w, 2), _conv_bn(w, w, 1)),
            nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1)),
            nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1)),
        ])
        self.out_dim = 4 * w
        if cfg.pretrained:
            load_encoder_weights(self, cfg.pretrained)
        self.apply_trainability()


class ResNetEncoder(ImageEncoder):
    """A torchvision ResNet without its pooling and classifier; stages = stem, layer1..layer4."""

    def __init__(self, cfg: EncoderConfig, arch: str):
        super().__init__(cfg)
        net = getattr(torchvision.models, arch)(weights=None)
        if cfg.pretrained:
            load_torchvision_weights(net, arch, cfg.pretrained)
        elif arch not in _WARNED_RANDOM_INIT:
            _WARNED_RANDOM_INIT.add(arch)
            warnings.warn(f"{arch}: no pretrained weights given, starting from random init "
                          f"(set model.encoder.pretrained=PATH or a torchvision weights name)", stacklevel=2)
        self.stages = nn.ModuleList([
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            net.layer1, net.layer2, net.layer3, net.layer4,
        ])
        self.out_dim = net.fc.in_features
        self.apply_trainability()


def load_torchvision_weights(net: nn.Module, arch: str, source: str) -> None:
    """Load a torchvision state dict from a local file, or by weights name (torchvision fetches and caches it)."""
    if Path(source).exists():
        state = _read_state_dict(Path(source))
    else:
        try:
            weights = torchvision.models.get_model_weights(arch)[source]
        except KeyError:
            raise CheckpointError(f"{source}: neither a local weight file nor a torchvision weights name for "
                                  f"{arch} (e.g. IMAGENET1K_V1)") from None
        state = weights.get_state_dict(progress=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    # The classifier is dropped anyway; anything else missing means the file is not this architecture.
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing:
        raise CheckpointError(f"{source}: not {arch} weights; missing {len(missing)} keys, e.g. {missing[:3]}")
    if [k for k in unexpected if not k.startswith("fc.")]:
        raise CheckpointError(f"{source}: unexpected keys for {arch}, e.g. {unexpected[:3]}")


def load_encoder_weights(encoder: nn.Module, source: str) -> None:
    """Load weights saved from a polymodal encoder (a safetensors/pth file of its state dict)."""
    state = _read_state_dict(Path(source))
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"{source}: missing {len(result.missing_keys)} encoder keys, "
                              f"e.g. {result.missing_keys[:3]}; is it weights for this encoder?")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        # Never unpickle arbitrary objects: weights_only refuses anything but tensors and containers.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file, reported as such
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err}); "
                              f"pass a torchvision .pth or a .safetensors file") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def small_cnn(cfg: EncoderConfig) -> ImageEncoder:
    return SmallCNN(cfg)


def resnet18(cfg: EncoderConfig) -> ImageEncoder:
    return ResNetEncoder(cfg, "resnet18")


def resnet34(cfg: EncoderConfig) -> ImageEncoder:
    return ResNetEncoder(cfg, "resnet34")


def resnet50(cfg: EncoderConfig) -> ImageEncoder:
    return ResNetEncoder(cfg, "resnet50")


def build_encoder(cfg: EncoderConfig) -> ImageEncoder:
    return ENCODERS.build(cfg.name, cfg)
