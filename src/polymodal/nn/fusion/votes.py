"""Decision-level fusion: a classifier head per modality, then their predictions combined.

    vote_fixed    sum_m w_m log p_m with fixed weights (config `weights`, default equal)
    vote_learned  the same with learned weights softmax(alpha)
    vote_hard     majority vote of the heads' argmax; ties go to the most confident voter
    vote_soft     the mean of the heads' probabilities

Built through `fusion.build_fusion` like every variant (see fusion.py for the shared interface).

Example:
    >>> from polymodal.nn.fusion.base import FusionConfig, build_fusion
    >>> f = build_fusion(FusionConfig(name="vote_hard", hidden=8), {"image": 4, "text": 6}, num_classes=3)
    >>> f.level, f({"image": torch.randn(2, 4), "text": torch.randn(2, 6)}).shape
    ('decision', torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from .base import Features, Fusion, FusionConfig, Masks, mlp


class VoteFusion(Fusion):
    """Decision-level base: a classifier head per modality; subclasses `combine` their predictions."""

    level = "decision"

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        if num_classes < 1:
            raise ConfigError(f"decision-level fusion {cfg.name!r} needs num_classes >= 1")
        self.heads = nn.ModuleDict({m: mlp(self.dims[m], cfg.hidden, num_classes, cfg.dropout)
                                    for m in self.modalities})
        self.out_dim = num_classes

    def head_logits(self, features: Features, masks: Masks = None) -> dict[str, torch.Tensor]:
        """Each modality's own prediction: name -> logits (B, num_classes)."""
        vectors = self.pooled(features, masks)
        return {m: self.heads[m](v) for m, v in zip(self.modalities, vectors, strict=True)}

    def combine(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        return self.combine(self.head_logits(features, masks))  # (B, K) log-probabilities

    def _stack(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([logits[m] for m in self.modalities], dim=1).float().log_softmax(-1)  # (B, M, K)


class FixedVoteFusion(VoteFusion):
    """Weighted log-linear pooling with fixed weights: log p = sum_m w_m log p_m, renormalised."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        weights = cfg.weights or [1.0] * len(self.modalities)
        if len(weights) != len(self.modalities) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"fusion.weights: need {len(self.modalities)} non-negative weights (one per "
                              f"modality, in the order {list(self.modalities)}), got {cfg.weights}")
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)

    def mixing_weights(self) -> torch.Tensor:
        return self.weights

    def combine(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logp = self._stack(logits)
        return (self.mixing_weights()[None, :, None] * logp).sum(dim=1).log_softmax(-1)


class LearnedVoteFusion(FixedVoteFusion):
    """Like `vote_fixed`, but the weights are softmax(alpha) with alpha learned (starting equal)."""

    def __init__(self, cfg: FusionConfig, dims: Mapping[str, int], num_classes: int = 0):
        super().__init__(cfg, dims, num_classes)
        self.alpha = nn.Parameter(torch.log(self.weights.clamp_min(1e-6)))

    def mixing_weights(self) -> torch.Tensor:
        return self.alpha.softmax(0)


class SoftVoteFusion(VoteFusion):
    """Soft voting: the average of the heads' probabilities."""

    def combine(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._stack(logits).exp().mean(dim=1).clamp_min(1e-12).log()


class HardVoteFusion(VoteFusion):
    """Majority vote of the heads' argmax; a tie goes to the class whose voter is most confident.

    The output is log(vote share). It has no useful gradient, so training passes the soft vote's
    gradient straight through (the forward value stays the hard vote).
    """

    def combine(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        probs = self._stack(logits).exp()  # (B, M, K)
        confidence, choice = probs.max(dim=-1)  # (B, M)
        votes = F.one_hot(choice, probs.shape[-1]).to(probs.dtype)  # (B, M, K)
        tie_break = (votes * confidence.unsqueeze(-1)).amax(dim=1)  # (B, K) in [0, 1]
        # 0.5 * confidence < 1 vote, so it only orders classes with equal vote counts
        score = votes.sum(dim=1) + 0.5 * tie_break + 1e-6
        hard = (score / score.sum(-1, keepdim=True)).log()
        soft = probs.mean(dim=1).clamp_min(1e-12).log()
        return hard.detach() + soft - soft.detach()
