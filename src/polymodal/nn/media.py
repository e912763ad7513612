"""Video and audio encoders: frames -> per-frame image features -> temporal model; log-mel -> small CNN.

frames (B, T, 3, H, W) -> the image encoder (any `registry.ENCODERS` entry) per frame -> regions
pooled to a grid (B, T, R, C) -> [features, change since the previous frame] (with `frame_diff`)
-> LayerNorm + Linear -> (B, T, D) + time position -> temporal model
(`TEMPORAL` registry: a transformer over frames, or attention pooling that adds a learned summary
token) -> video tokens (B, T', D). With `temporal: space_time` (nn/space_time.py) the grid is not
flattened into one token per frame: every region is a token with its 2D position, attended across time
and space, so the tokens say where things are and which way they move; each frame's regions are then pooled by attention -> (B, T, D).

log-mel (B, M, L) -> 3 strided conv blocks -> frequency x channels flattened per time step (pitch
stays in the features) -> Linear -> pooled to `tokens` time steps -> audio tokens (B, A, D).

Per-frame features do not depend on the rest of the model when the image encoder is frozen, so
tasks compute them once (`MediaEncoder.frame_features`) and train on the cache.

Example:
    >>> enc = MediaEncoder(MediaConfig(encoder=EncoderConfig(name="small_cnn", width=8), dim=32))
    >>> out = enc({"frames": torch.zeros(2, 4, 3, 32, 32), "mel": torch.zeros(2, 40, 64)})
    >>> out["video"].shape, out["audio"].shape
    (torch.Size([2, 4, 32]), torch.Size([2, 16, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from ..data.audio import MelConfig
from ..errors import ConfigError, InputError
from ..registry import TEMPORAL
from .encoders import build_encoder
from .transformer import _sincos, sincos_2d

MODALITIES = ("video", "audio")


@dataclass
class MediaConfig:
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(name="small_cnn", width=16, freeze=True))
    modalities: list[str] = field(default_factory=lambda: ["video", "audio"])
    image_size: int = 64
    frames: int = 16                  # frames sampled per clip (uniformly)
    grid: int = 4                     # per-frame regions pooled to grid x grid before projection
    frame_diff: bool = False          # each frame token also sees how its features changed since the last frame
    dim: int = 128                    # token width of every modality
    temporal: str = "transformer"     # a key of TEMPORAL: transformer | attention_pool; per region: space_time | motion_slots
    temporal_layers: int = 1
    heads: int = 4
    audio_width: int = 16             # audio CNN channels: width -> 2 width -> 4 width
    audio_tokens: int = 16            # audio time steps after pooling
    mel: MelConfig = field(default_factory=MelConfig)
    dropout: float = 0.1
    missing_token: bool = False       # a modality a clip lacks (or dropout removed) is a learned "missing" token,
                                      # not zeros: one model then serves video + sound, silent video, sound alone

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"model.media.modalities: choose one or more of {list(MODALITIES)}, got {self.modalities}")


class TemporalTransformer(nn.Module):
    """Pre-norm transformer encoder over frame tokens: every frame sees the whole clip."""

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(x))  # (B, T, D)


class AttentionPool(nn.Module):
    """Frame tokens kept as they are, plus one learned query's attention-weighted summary prepended."""

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x)
        return self.norm(torch.cat([summary, x], dim=1))  # (B, 1 + T, D)


def temporal_transformer(cfg: MediaConfig) -> nn.Module:
    return TemporalTransformer(cfg)


def attention_pool(cfg: MediaConfig) -> nn.Module:
    return AttentionPool(cfg)


def time_positions(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed sine-cosine positions (n, dim) of n time steps."""
    return F.pad(_sincos(torch.arange(n, device=device), dim // 2), (0, dim % 2))


class AudioEncoder(nn.Module):
    """Small CNN over a log-mel spectrogram; see the module docstring."""

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        w, m = cfg.audio_width, cfg.mel.n_mels
        blocks, cin = [], 1
        for cout in (w, 2 * w, 4 * w):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.cnn = nn.Sequential(*blocks)
        freq = m
        for _ in range(3):
            freq = (freq + 1) // 2
        self.proj = nn.Linear(4 * w * freq, cfg.dim)
        self.tokens = cfg.audio_tokens
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = (mel - mel.mean(dim=(1, 2), keepdim=True)) / mel.std(dim=(1, 2), keepdim=True).clamp_min(1e-3)
        x = self.cnn(x.unsqueeze(1))  # (B, C, M', L')
        x = self.proj(x.flatten(1, 2).transpose(1, 2))  # (B, L', D)
        x = F.adaptive_avg_pool1d(x.transpose(1, 2), self.tokens).transpose(1, 2)  # (B, A, D)
        return self.norm(x + time_positions(self.tokens, x.shape[-1], x.device))


class MediaEncoder(nn.Module):
    """The clip's modalities as token sequences: {"video": (B, T', D), "audio": (B, A, D)}."""

    def __init__(self, cfg: MediaConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = tuple(cfg.modalities)
        self.per_region = False
        if "video" in self.modalities:
            self.encoder = build_encoder(cfg.encoder)
            self.temporal = TEMPORAL.build(cfg.temporal, cfg)
            self.per_region = getattr(self.temporal, "per_region", False)  # a token per region, not per frame
            regions = 1 if self.per_region else cfg.grid * cfg.grid
            feat = self.encoder.out_dim * regions * (2 if cfg.frame_diff else 1)
            self.frame_proj = nn.Sequential(nn.LayerNorm(feat), nn.Linear(feat, cfg.dim), nn.Dropout(cfg.dropout))
        if "audio" in self.modalities:
            self.audio = AudioEncoder(cfg)
        if cfg.missing_token:
            self.missing = nn.Parameter(torch.zeros(len(self.modalities), cfg.dim))

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, T, 3, H, W) -> per-frame regions (B, T, grid * grid, C)."""
        b, t = frames.shape[:2]
        regions = self.encoder(frames.flatten(0, 1))  # (B*T, N, C)
        side = int(regions.shape[1] ** 0.5)
        fmap = regions.transpose(1, 2).reshape(b * t, -1, side, side)
        pooled = F.adaptive_avg_pool2d(fmap, self.cfg.grid).flatten(2).transpose(1, 2)
        return pooled.reshape(b, t, self.cfg.grid * self.cfg.grid, -1)

    def encode_video(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame regions (B, T, R, C) -> video tokens (B, T', D)."""
        x = features.float() if self.per_region else features.flatten(2).float()[:, :, None]  # (B, T, R | 1, C')
        if self.cfg.frame_diff:  # what changed is what an event is about: give it to the projection directly
            x = torch.cat([x, x - torch.cat([x[:, :1], x[:, :-1]], dim=1)], dim=-1)
        b, t, r, _ = x.shape
        x = self.frame_proj(x) + time_positions(t, self.cfg.dim, x.device)[:, None]  # (B, T, R | 1, D)
        if not self.per_region:
            return self.temporal(x[:, :, 0])
        side = int(r ** 0.5)
        x = x + sincos_2d(side, side, self.cfg.dim, x.device)  # where in the frame each region is
        if getattr(self.temporal, "uses_change", False):  # each region's raw change since the previous frame
            raw = features.float()
            diff = raw - torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
            return self.temporal(x, change=(diff.pow(2).sum(-1) + 1e-8).sqrt())  # + eps: no nan gradient at 0
        return self.temporal(x)

    def token_count(self, modality: str) -> int:
        """How many tokens `modality` contributes per clip (what a stand-in for a missing one must match)."""
        if modality == "audio":
            return self.cfg.audio_tokens
        return self.cfg.frames + (self.cfg.temporal == "attention_pool")

    def frame_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """Video tokens -> one token per frame (B, T, D): a summary token dropped."""
        return video[:, 1:] if self.cfg.temporal == "attention_pool" else video

    def forward(self, batch: dict[str, torch.Tensor], dropout: float = 0.0) -> dict[str, torch.Tensor]:
        """batch: "frame_features" (B, T, R, C) or "frames" (B, T, 3, H, W) normalised; "mel" (B, M, L).

        Every configured modality comes back. One the batch lacks (a silent video has no "mel", a sound file
        no frames) and, in training, one that `dropout` removes from a clip (the chance a clip loses one
        random modality) are stood in for by the missing token (`missing_token`) or zeros.
        """
        found = self.encode_present(batch)
        ref = next(iter(found.values()))
        keep = self.modality_mask(len(ref), ref.device, dropout)
        out = {}
        for m, name in enumerate(self.modalities):
            missing = self.stand_in(m, ref)
            x = found.get(name)
            out[name] = (missing.expand(len(ref), self.token_count(name), -1) if x is None
                         else x * keep[:, m, None, None] + missing * (1 - keep[:, m, None, None]))
        return out

    def encode_present(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokens of only the modalities the batch has (nothing stood in): {"video": (B, T', D), ...}."""
        found = {}
        if "video" in self.modalities and ("frame_features" in batch or "frames" in batch):
            feats = batch["frame_features"] if "frame_features" in batch else self.frame_features(batch["frames"])
            found["video"] = self.encode_video(feats)
        if "audio" in self.modalities and "mel" in batch:
            found["audio"] = self.audio(batch["mel"].float())
        if not found:
            raise InputError(f"the clip has none of the modalities the model uses ({', '.join(self.modalities)})")
        return found

    @torch.inference_mode()
    def pooled(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality the batch has, encoded and averaged over time: {"video": (B, D), ...} (for OOD scores)."""
        was = self.training
        self.eval()
        out = {name: x.float().mean(1) for name, x in self.encode_present(batch).items()}
        self.train(was)
        return out

    def keep_only(self, tokens: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
        """`forward`'s tokens as if the clip had only modality `name`: the others stood in for as when missing."""
        return {other: x if other == name else self.stand_in(m, x).expand_as(x)
                for m, (other, x) in enumerate((o, tokens[o]) for o in self.modalities)}

    def stand_in(self, m: int, like: torch.Tensor) -> torch.Tensor:
        """(D,) what stands in for the m-th modality when a clip lacks it: the missing token, or zeros."""
        return self.missing[m] if self.cfg.missing_token else like.new_zeros(self.cfg.dim)

    def modality_mask(self, b: int, device: torch.device, dropout: float) -> torch.Tensor:
        """(B, M) 1 = keep; in training, with `dropout`, one random modality of some clips is 0."""
        keep = torch.ones(b, len(self.modalities), device=device)
        if self.training and dropout > 0 and len(self.modalities) > 1:
            drop = torch.rand(b, device=device) < dropout
            which = torch.randint(len(self.modalities), (b,), device=device)
            keep[drop, which[drop]] = 0.0
        return keep

    def time_tokens(self, tokens: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """The modalities' tokens resampled to `steps` time steps and summed: (B, steps, D), for event times."""
        parts = []
        for name, x in tokens.items():
            if name == "video":
                x = self.frame_tokens(x)
            parts.append(F.interpolate(x.transpose(1, 2), size=steps, mode="linear",
                                       align_corners=False).transpose(1, 2))
        return sum(parts)
