"""Fusion of modalities, feature-level and decision-level: one interface, fourteen variants.

base.py holds the interface, the config and the single-module variants; joint.py, recurrent.py,
word_pairs.py and votes.py hold one family each. The variants are registered in `polymodal.nn`.

Example:
    >>> from polymodal.nn.fusion import FusionConfig, build_fusion
    >>> build_fusion(FusionConfig(name="gated", dim=16), {"image": 8, "text": 4}).out_dim
    16
"""

from .base import Features, Fusion, FusionConfig, Masks, build_fusion

__all__ = ["Features", "Fusion", "FusionConfig", "Masks", "build_fusion"]
