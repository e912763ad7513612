"""Building blocks: encoders, attention, decoders, transformer parts, text towers, fusion.

No saved model lives here (those are in `polymodal.models`). This file is the one place that fills
the building-block registries declared in `polymodal.registry`.

Example:
    >>> from polymodal.registry import FUSION, ENCODERS
    >>> "gated" in FUSION, ENCODERS.names()
    (True, ['hf_vision', 'resnet18', 'resnet34', 'resnet50', 'small_cnn', 'vit_tiny'])
"""

from ..registry import DECODERS, ENCODERS, FUSION, QUESTION_ENCODERS, TEMPORAL, TEXT_ENCODERS
from . import (
    clip,
    decoders,
    encoders,
    hf_vision,
    media,
    motion,
    question,
    space_time,
    text_encoders,
    transformer,
)
from .fusion import base, joint, recurrent, votes, word_pairs

ENCODERS.fill({
    "small_cnn": encoders.small_cnn,
    "resnet18": encoders.resnet18,
    "resnet34": encoders.resnet34,
    "resnet50": encoders.resnet50,
    "vit_tiny": transformer.vit_tiny,
    "hf_vision": hf_vision.hf_vision,  # a ViT / SigLIP folder (model.encoder.pretrained)
})
DECODERS.fill({
    "seed_lstm": decoders.seed_lstm,
    "attention_lstm": decoders.attention_lstm,
    "transformer": transformer.transformer,
})
TEXT_ENCODERS.fill({
    "transformer": text_encoders.TransformerTower,
    "lstm": text_encoders.LSTMTower,
    "hf_bert": text_encoders.HFBertTower,
    "clip_text": clip.clip_text,
})
QUESTION_ENCODERS.fill({
    "lstm": question.lstm_question_encoder,
    "transformer": question.transformer_question_encoder,
})
TEMPORAL.fill({
    "transformer": media.temporal_transformer,
    "attention_pool": media.attention_pool,
    "space_time": space_time.space_time_transformer,
    "motion_slots": motion.motion_slots,
})
# Each variant class is its own builder: cls(cfg, dims, num_classes).
FUSION.fill({
    "concat_linear": base.ConcatLinearFusion,
    "concat_mlp": base.ConcatMLPFusion,
    "gated": base.GatedFusion,
    "bilinear": base.BilinearFusion,
    "film": base.FiLMFusion,
    "cross_attention": base.CrossAttentionFusion,
    "relation": base.RelationFusion,
    "joint": joint.JointFusion,
    "recurrent": recurrent.RecurrentReadFusion,
    "word_pairs": word_pairs.WordPairFusion,
    "vote_fixed": votes.FixedVoteFusion,
    "vote_learned": votes.LearnedVoteFusion,
    "vote_hard": votes.HardVoteFusion,
    "vote_soft": votes.SoftVoteFusion,
})
