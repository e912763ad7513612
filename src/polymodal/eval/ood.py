"""Know what it does not know: an out-of-distribution score for a model's image (or audio) input.

A model trained on Shapes World will caption a photo, a page of text or pure noise with the same
confidence as a Shapes World scene. This module gives it a way to say "this is not what I was trained
on": the image encoder's regions, mean-pooled, are compared with the pooled features of the training
images by Mahalanobis distance (Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples"), and an input is flagged when its distance is above a threshold set on
held-out in-distribution images (by default the 98th percentile: ~2% of such images flagged).

The statistics are saved beside a checkpoint as `ood_stats.safetensors` (mean, precision; the scalars
in the safetensors metadata; no pickle). A checkpoint saved before them has no such file, and
`FeatureStats.load` returns None: callers say once that OOD scoring is unavailable.

The covariance is shrunk toward its diagonal (Ledoit-Wolf's analytic shrinkage of the correlation matrix
toward the identity, Ledoit & Wolf 2004), so that a few hundred images in 128 dimensions still give a
well-conditioned precision matrix.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> stats = FeatureStats.fit(torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g))
    >>> far = torch.randn(100, 4, generator=g) + 6
    >>> auroc(stats.score(torch.randn(200, 4, generator=g)), stats.score(far)) > 0.99
    True
    >>> bool(stats.in_distribution(far).any())
    False
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError, PolymodalError

FILE = "ood_stats.safetensors"
SCORE_NAME = "mahalanobis"


def ledoit_wolf_shrinkage(z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Shrunk covariance of centred rows `z` (N, D) toward mu * I, and the shrinkage weight in [0, 1].

    Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance matrices", the
    analytic optimum as in scikit-learn's `ledoit_wolf`: weight b2 / d2 on the target.

    Example:
        >>> cov, w = ledoit_wolf_shrinkage(torch.randn(10, 50, generator=torch.Generator().manual_seed(0)))
        >>> cov.shape, 0.5 < w <= 1.0
        (torch.Size([50, 50]), True)
    """
    n, d = z.shape
    sample = z.T @ z / n  # (D, D)
    mu = sample.diagonal().mean()
    d2 = ((sample - mu * torch.eye(d, dtype=z.dtype)) ** 2).sum()
    b2 = ((z.pow(2).sum(1) ** 2).sum() - n * (sample**2).sum()) / n**2  # = sum_k |z_k z_k^T - S|^2 / n^2
    weight = float(min(b2, d2) / d2) if d2 > 0 else 1.0
    return (1 - weight) * sample + weight * mu * torch.eye(d, dtype=z.dtype), weight


@dataclass
class FeatureStats:
    """In-distribution feature statistics: mean (D,), precision (D, D) and the flagging threshold.

    Scores are Mahalanobis distances sqrt((x - mean)^T precision (x - mean)); an input with a score
    above `threshold` is out of distribution. `quantile` is the share of calibration data the threshold
    keeps in; `shrinkage` the covariance's weight on its diagonal.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float
    score_name: str = SCORE_NAME
    quantile: float = 0.98
    shrinkage: float = 0.0

    @classmethod
    def fit(cls, features: torch.Tensor, calibration: torch.Tensor, quantile: float = 0.98) -> FeatureStats:
        """Statistics of `features` (N, D); the threshold is the `quantile` of `calibration` (M, D) scores.

        Use held-out in-distribution data for `calibration`, so that ~(1 - quantile) of new in-distribution
        inputs are flagged (training features score lower than new ones).

        Example:
            >>> x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1))
            >>> stats = FeatureStats.fit(x[:200], x[200:], quantile=0.9)
            >>> stats.mean.shape, stats.precision.shape, round(stats.in_distribution(x[200:]).float().mean().item(), 1)
            (torch.Size([3]), torch.Size([3, 3]), 0.9)
        """
        if features.ndim != 2 or calibration.ndim != 2 or features.shape[1] != calibration.shape[1]:
            raise ConfigError(f"FeatureStats.fit: features {tuple(features.shape)} and calibration "
                              f"{tuple(calibration.shape)} must both be (N, D) with the same D")
        if features.shape[0] < 2 or calibration.shape[0] < 1 or not 0 < quantile < 1:
            raise ConfigError(f"FeatureStats.fit: need >= 2 feature rows, >= 1 calibration row and 0 < quantile < 1 "
                              f"(got {features.shape[0]}, {calibration.shape[0]}, {quantile})")
        x = features.detach().double().cpu()
        mean = x.mean(0)
        std = x.std(0).clamp_min(1e-6 * float(x.std(0).max().clamp_min(1e-12)))  # a constant feature stays finite
        corr, weight = ledoit_wolf_shrinkage((x - mean) / std)  # correlation shrunk to I = covariance to its diagonal
        precision = torch.linalg.inv(corr) / std[:, None] / std[None, :]
        precision = (precision + precision.T) / 2
        stats = cls(mean.float(), precision.float(), 0.0, SCORE_NAME, quantile, weight)
        stats.threshold = float(torch.quantile(stats.score(calibration).double(), quantile))
        return stats

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row of `features` (N, D) -> (N,); higher is further out.

        Example:
            >>> stats = FeatureStats(torch.zeros(2), torch.eye(2), threshold=1.0)
            >>> stats.score(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
            tensor([5., 0.])
        """
        diff = features.detach().double().cpu() - self.mean.double()  # (N, D)
        return ((diff @ self.precision.double()) * diff).sum(-1).clamp_min(0).sqrt().float()

    def in_distribution(self, features: torch.Tensor) -> torch.Tensor:
        """True for each row whose score is within the threshold -> BoolTensor (N,)."""
        return self.score(features) <= self.threshold

    def save(self, folder: str | os.PathLike, name: str = "") -> Path:
        """Write `folder/ood_stats.safetensors` (tensors + scalars in its metadata) and return its path; with a
        `name` (one input of several, e.g. "audio"), `folder/ood_stats-{name}.safetensors`.

        Example:
            >>> import tempfile
            >>> stats = FeatureStats(torch.zeros(2), torch.eye(2), threshold=1.5)
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     FeatureStats.load(stats.save(tmp).parent).threshold
            1.5
        """
        path = stats_path(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"threshold": repr(self.threshold), "score_name": self.score_name, "quantile": repr(self.quantile),
                "shrinkage": repr(self.shrinkage), "format": "polymodal.eval.ood/1"}
        tmp = path.with_suffix(".tmp")
        save_file({"mean": self.mean.detach().float().contiguous().cpu(),
                   "precision": self.precision.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: a crash never leaves half a file
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike, name: str = "") -> FeatureStats | None:
        """The statistics saved in `folder` (under `name`), or None when it has none (a checkpoint older than
        OOD scoring).

        Raises:
            CheckpointError: the file is there but unreadable or incomplete.
        """
        path = stats_path(folder, name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta: dict[str, Any] = f.metadata() or {}
                mean, precision = f.get_tensor("mean"), f.get_tensor("precision")
            return cls(mean, precision, float(meta["threshold"]), meta.get("score_name", SCORE_NAME),
                       float(meta.get("quantile", 0.98)), float(meta.get("shrinkage", 0.0)))
        except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable OOD statistics ({type(err).__name__}: {err}); delete it and "
                                  f"refit with bench/ood.py") from None


def stats_path(folder: str | os.PathLike, name: str = "") -> Path:
    """Where statistics are saved: `ood_stats.safetensors`, or `ood_stats-{name}.safetensors` for one named input."""
    return Path(folder) / (FILE if not name else FILE.replace(".safetensors", f"-{name}.safetensors"))


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("encoder", "image_encoder", "vision_encoder"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ConfigError(f"{type(model).__name__}: no image encoder (.encoder) to take OOD features from; "
                      f"use an image model (captioner, prefix LM, VQA, dual encoder)")


def _pool(regions: torch.Tensor) -> torch.Tensor:
    """Encoder output -> (B, C): regions (B, N, C) and maps (B, C, H, W) averaged; (B, C) kept."""
    if regions.ndim == 3:
        return regions.mean(1)
    if regions.ndim == 4:
        return regions.mean((2, 3))
    return regions.reshape(regions.shape[0], -1)


def pooled_image_features(model: torch.nn.Module, images: Sequence[Any], batch_size: int = 64,
                          progress: bool = False) -> torch.Tensor:
    """The model's own image encoder regions (B, N, C), mean-pooled -> (N_images, C) float32 on the CPU.

    Any polymodal image model with `.preprocess(images)` and an `.encoder` (the captioners, the prefix LM,
    VQA, the dual encoder); `images` are paths, bytes or PIL images.

    Example:
        >>> from PIL import Image
        >>> from polymodal.config import EncoderConfig, ModelConfig
        >>> from polymodal.models.captioner import Captioner
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> model = Captioner(ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8)),
        ...                   WordTokenizer.build(["a red circle"]))
        >>> pooled_image_features(model, [Image.new("RGB", (40, 40))] * 3, batch_size=2).shape[0]
        3
    """
    encoder, was_training = _encoder(model), model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc="OOD features", disable=not progress):
                batch = model.preprocess(list(images[start:start + batch_size]))
                out.append(_pool(encoder(batch)).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        raise ConfigError("pooled_image_features: no images given; pass at least one image")
    return torch.cat(out)


def auroc(in_scores: torch.Tensor | Sequence[float], out_scores: torch.Tensor | Sequence[float]) -> float:
    """Area under the ROC curve for telling `out_scores` (higher) from `in_scores`; ties count half.

    The Mann-Whitney U statistic from average ranks: 1.0 separates perfectly, 0.5 is chance.

    Example:
        >>> auroc([0.1, 0.2, 0.3], [0.4, 0.5]), auroc([1.0, 2.0], [1.0, 2.0]), auroc([3.0], [1.0, 2.0])
        (1.0, 0.5, 0.0)
    """
    a = torch.as_tensor(in_scores, dtype=torch.float64).flatten()
    b = torch.as_tensor(out_scores, dtype=torch.float64).flatten()
    if a.numel() == 0 or b.numel() == 0:
        raise ConfigError(f"auroc: both score sets need at least one value (got {a.numel()} and {b.numel()})")
    both = torch.cat([a, b])
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # 1-based average rank of each value
    u = ranks[a.numel():].sum() - b.numel() * (b.numel() + 1) / 2
    return float(u / (a.numel() * b.numel()))



def input_features(model: torch.nn.Module, inputs: Sequence[Any], progress: bool = False) -> torch.Tensor:
    """The features OOD statistics are fit on and scored with: the model's own `ood_features(inputs)` where it
    defines one (the speech recognizer pools its encoder over time), else `pooled_image_features`."""
    own = getattr(model, "ood_features", None)
    return own(list(inputs)) if callable(own) else pooled_image_features(model, inputs, progress=progress)


def check_inputs(model: torch.nn.Module, inputs: Sequence[Any]) -> list[dict[str, Any]] | None:
    """Per input (an image, or audio for a speech model) {"in_distribution": bool, "ood_score": float} against
    the statistics saved with `model` (`polymodal.load` attaches them as `model.ood_stats`); None without them.

    Example:
        >>> from PIL import Image
        >>> from polymodal.config import EncoderConfig, ModelConfig
        >>> from polymodal.models.captioner import Captioner
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> model = Captioner(ModelConfig(image_size=32, encoder=EncoderConfig(name="small_cnn", width=8)),
        ...                   WordTokenizer.build(["a red circle"]))
        >>> check_inputs(model, [Image.new("RGB", (32, 32))]) is None  # no statistics saved with it
        True
        >>> model.ood_stats = FeatureStats(torch.zeros(32), torch.eye(32), threshold=1e6)  # 32 encoder channels
        >>> check_inputs(model, [Image.new("RGB", (32, 32))])[0]["in_distribution"]
        True
    """
    stats = getattr(model, "ood_stats", None)
    if stats is None:
        return None
    scores = stats.score(input_features(model, inputs))
    return [{"in_distribution": bool(s <= stats.threshold), "ood_score": round(float(s), 3)} for s in scores]


def fit_model_stats(model: torch.nn.Module, train_inputs: Sequence[Any], calibration_inputs: Sequence[Any],
                    quantile: float = 0.98, limit: int = 2000) -> FeatureStats:
    """Statistics of a trained model's own features (`input_features`): fit on (up to `limit`) training inputs,
    threshold on held-out in-distribution ones; save them beside its weights with `.save(model_dir)`."""
    return FeatureStats.fit(input_features(model, list(train_inputs)[:limit]),
                            input_features(model, list(calibration_inputs)[:limit]), quantile)


def save_model_stats(model: torch.nn.Module, folder: str | os.PathLike, train_inputs: Sequence[Any],
                     calibration_inputs: Sequence[Any]) -> float | None:
    """The end of a training run: fit the trained model's statistics (`fit_model_stats`, each input once) and
    save them beside its weights in `folder`; returns the threshold, or None (and says why) when the inputs
    cannot give them (too few, or one unreadable)."""
    train, calibration = list(dict.fromkeys(train_inputs)), list(dict.fromkeys(calibration_inputs))
    if len(train) < 2 or not calibration:
        tqdm.write("out-of-distribution statistics: skipped (needs training and validation inputs)")
        return None
    try:
        stats = fit_model_stats(model, train, calibration)
    except PolymodalError as err:
        tqdm.write(f"out-of-distribution statistics: skipped ({err})")
        return None
    stats.save(folder)
    tqdm.write(f"out-of-distribution statistics: saved to {folder} (threshold {stats.threshold:.2f})")
    return stats.threshold


# ----------------------------------------------------------------------------- clips: one statistic per modality
def fit_clip_stats(model: torch.nn.Module, train: Iterable[dict[str, torch.Tensor]],
                   calibration: Iterable[dict[str, torch.Tensor]], quantile: float = 0.98) -> dict[str, FeatureStats]:
    """Per modality of a video model (`model.media`, nn/media.py), statistics of its time-pooled tokens: fit on
    the `train` batches, threshold on the `calibration` ones. One per modality, so that a silent video (video
    alone) or a sound file (audio alone) is checked against what it has, not flagged for what it lacks."""
    feats: dict[str, list[list[torch.Tensor]]] = {}
    for i, batches in enumerate((train, calibration)):
        for batch in batches:
            for name, x in model.media.pooled(batch).items():
                feats.setdefault(name, [[], []])[i].append(x.cpu())
    return {name: FeatureStats.fit(torch.cat(a), torch.cat(b), quantile) for name, (a, b) in feats.items() if a and b}


def load_clip_stats(model: torch.nn.Module, folder: str | os.PathLike) -> dict[str, FeatureStats]:
    """The per-modality statistics saved beside a video model (empty when it has none)."""
    found = {m: FeatureStats.load(folder, m) for m in getattr(model, "ood_inputs", ())}
    return {m: s for m, s in found.items() if s is not None}


def check_clip(model: torch.nn.Module, clip: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """One clip (`models.video_captioner.load_clip`: "frames" and/or "mel", unbatched) against a video model's
    per-modality statistics (`model.ood_stats_by_input`):
    {"in_distribution": every modality it has is in, "ood_score": the score furthest past its threshold
    (relative: 1.0 = at the threshold), "by_modality": {name: {"in_distribution", "ood_score"}}}; None when
    the model has no statistics for the modalities the clip has."""
    stats = getattr(model, "ood_stats_by_input", None) or {}
    batch = {k: v[None].to(next(model.parameters()).device) for k, v in clip.items() if k in ("frames", "mel")}
    scores = {name: (float(stats[name].score(x)[0]), stats[name].threshold)
              for name, x in model.media.pooled(batch).items() if name in stats}
    if not scores:
        return None
    by = {name: {"in_distribution": s <= t, "ood_score": round(s, 3)} for name, (s, t) in scores.items()}
    return {"in_distribution": all(v["in_distribution"] for v in by.values()),
            "ood_score": round(max(s / max(t, 1e-9) for s, t in scores.values()), 3), "by_modality": by}


__all__ = ["FILE", "FeatureStats", "auroc", "check_clip", "check_inputs", "fit_clip_stats", "fit_model_stats",
           "input_features", "ledoit_wolf_shrinkage", "load_clip_stats", "pooled_image_features", "save_model_stats",
           "stats_path"]
