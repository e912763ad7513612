"""Explicit key maps from Hugging Face `CLIPModel` and OpenCLIP `CLIP` state dicts to polymodal's CLIP towers.

Our names are those of a `DualEncoder` built with a CLIP vision tower (`encoder.`), a `clip_text` tower
(`text.`), bias-free `image_proj` / `text_proj` and `logit_scale` (nn/clip.py). Each of our tensors is made
from one or more of theirs: Hugging Face splits the attention input projection into q/k/v (concatenated
here, in that order, into our fused `c_attn`), OpenCLIP stores its two projections as (in, out) matrices
(transposed here). Checked both ways like nn/gpt2.py: every tensor of theirs must be used ("unexpected"),
every tensor of ours must be filled ("missing"), and every shape must agree ("shape mismatch").

Example:
    >>> keys = hf_key_map(vision_layers=1, text_layers=1)
    >>> keys["encoder.blocks.0.attn.c_attn.weight"]
    Source(keys=('vision_model.encoder.layers.0.self_attn.q_proj.weight', \
'vision_model.encoder.layers.0.self_attn.k_proj.weight', 'vision_model.encoder.layers.0.self_attn.v_proj.weight'), \
transpose=False)
    >>> openclip_key_map(1, 1)["image_proj.weight"]
    Source(keys=('visual.proj',), transpose=True)
    >>> theirs = {k: torch.zeros(1) for src in keys.values() for k in src.keys}
    >>> del theirs["logit_scale"]; theirs["vision_model.extra"] = torch.zeros(1)
    >>> report = convert_state(theirs, keys, {ours: torch.zeros(1) for ours in keys})[1]
    >>> report.missing, report.unexpected
    (['logit_scale'], ['vision_model.extra'])
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

from ..errors import CheckpointError
from .hf_folder import LoadReport


class Source(NamedTuple):
    """Their tensors that make one of ours: concatenated along dim 0, then transposed if asked."""

    keys: tuple[str, ...]
    transpose: bool = False


CLIPLoadReport = LoadReport


# Inside one block: our name -> their suffixes (HF, OpenCLIP). HF splits q/k/v; OpenCLIP fuses them.
_HF_BLOCK = {
    "ln_1.weight": ("layer_norm1.weight",), "ln_1.bias": ("layer_norm1.bias",),
    "attn.c_attn.weight": tuple(f"self_attn.{x}_proj.weight" for x in "qkv"),
    "attn.c_attn.bias": tuple(f"self_attn.{x}_proj.bias" for x in "qkv"),
    "attn.c_proj.weight": ("self_attn.out_proj.weight",), "attn.c_proj.bias": ("self_attn.out_proj.bias",),
    "ln_2.weight": ("layer_norm2.weight",), "ln_2.bias": ("layer_norm2.bias",),
    "mlp.c_fc.weight": ("mlp.fc1.weight",), "mlp.c_fc.bias": ("mlp.fc1.bias",),
    "mlp.c_proj.weight": ("mlp.fc2.weight",), "mlp.c_proj.bias": ("mlp.fc2.bias",),
}
_OC_BLOCK = {
    "ln_1.weight": ("ln_1.weight",), "ln_1.bias": ("ln_1.bias",),
    "attn.c_attn.weight": ("attn.in_proj_weight",), "attn.c_attn.bias": ("attn.in_proj_bias",),
    "attn.c_proj.weight": ("attn.out_proj.weight",), "attn.c_proj.bias": ("attn.out_proj.bias",),
    "ln_2.weight": ("ln_2.weight",), "ln_2.bias": ("ln_2.bias",),
    "mlp.c_fc.weight": ("mlp.c_fc.weight",), "mlp.c_fc.bias": ("mlp.c_fc.bias",),
    "mlp.c_proj.weight": ("mlp.c_proj.weight",), "mlp.c_proj.bias": ("mlp.c_proj.bias",),
}
_HF_TOP = {
    "encoder.patch_embed.weight": "vision_model.embeddings.patch_embedding.weight",
    "encoder.class_embedding": "vision_model.embeddings.class_embedding",
    "encoder.position_embedding": "vision_model.embeddings.position_embedding.weight",
    "encoder.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: Hugging Face's spelling
    "encoder.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "encoder.ln_post.weight": "vision_model.post_layernorm.weight",
    "encoder.ln_post.bias": "vision_model.post_layernorm.bias",
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.position_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "image_proj.weight": "visual_projection.weight",
    "text_proj.weight": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_OC_TOP = {
    "encoder.patch_embed.weight": "visual.conv1.weight",
    "encoder.class_embedding": "visual.class_embedding",
    "encoder.position_embedding": "visual.positional_embedding",
    "encoder.ln_pre.weight": "visual.ln_pre.weight", "encoder.ln_pre.bias": "visual.ln_pre.bias",
    "encoder.ln_post.weight": "visual.ln_post.weight", "encoder.ln_post.bias": "visual.ln_post.bias",
    "text.token_embedding.weight": "token_embedding.weight",
    "text.position_embedding": "positional_embedding",
    "text.ln_final.weight": "ln_final.weight", "text.ln_final.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
# Buffers some saves carry that hold no weights: position ids (older transformers), OpenCLIP's causal mask.
IGNORED = re.compile(r"^((vision|text)_model\.embeddings\.position_ids|attn_mask)$")


def _blocks(prefix: str, theirs: str, layers: int, table: dict[str, tuple[str, ...]]) -> dict[str, Source]:
    return {f"{prefix}.blocks.{i}.{ours}": Source(tuple(f"{theirs}.{i}.{s}" for s in suffixes))
            for i in range(layers) for ours, suffixes in table.items()}


def hf_key_map(vision_layers: int, text_layers: int) -> dict[str, Source]:
    """Our key -> Hugging Face `CLIPModel` keys, for towers of these depths."""
    return {**{ours: Source((k,)) for ours, k in _HF_TOP.items()},
            **_blocks("encoder", "vision_model.encoder.layers", vision_layers, _HF_BLOCK),
            **_blocks("text", "text_model.encoder.layers", text_layers, _HF_BLOCK)}


def openclip_key_map(vision_layers: int, text_layers: int) -> dict[str, Source]:
    """Our key -> OpenCLIP `CLIP` (ViT image tower) keys; OpenCLIP's projections are (in, out), so transposed."""
    return {**{ours: Source((k,)) for ours, k in _OC_TOP.items()},
            "image_proj.weight": Source(("visual.proj",), True),
            "text_proj.weight": Source(("text_projection",), True),
            **_blocks("encoder", "visual.transformer.resblocks", vision_layers, _OC_BLOCK),
            **_blocks("text", "transformer.resblocks", text_layers, _OC_BLOCK)}


def convert_state(theirs: dict[str, torch.Tensor], mapping: dict[str, Source],
                  own: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], CLIPLoadReport]:
    """Their state dict -> ours through `mapping`, checked against our state dict `own` both ways."""
    report, converted = CLIPLoadReport(), {}
    used = {k for src in mapping.values() for k in src.keys}
    report.ignored = [k for k in theirs if k not in used and IGNORED.match(k)]
    report.unexpected = [k for k in theirs if k not in used and not IGNORED.match(k)]
    report.missing = [k for src in mapping.values() for k in src.keys if k not in theirs]
    report.missing += [k for k in own if k not in mapping]  # a tensor of ours no map entry fills
    for ours, src in mapping.items():
        if ours not in own:
            report.unexpected.append(f"{', '.join(src.keys)} (-> {ours}, which this model lacks)")
            continue
        if any(k not in theirs for k in src.keys):
            continue
        parts = [theirs[k] for k in src.keys]
        if len({p.shape[1:] for p in parts}) > 1:
            report.mismatched.append(f"{src.keys[0]} {tuple(parts[0].shape)} (its q/k/v shapes differ)")
            continue
        value = torch.cat(parts) if len(parts) > 1 else parts[0]
        value = value.T if src.transpose else value
        if value.shape != own[ours].shape:
            report.mismatched.append(f"{src.keys[0]} {tuple(parts[0].shape)} -> {ours} {tuple(own[ours].shape)}")
            continue
        converted[ours] = value.to(own[ours].dtype).contiguous()
    report.loaded = len(converted)
    return converted, report


def check_report(report: CLIPLoadReport, file: str) -> None:
    """Raise one CheckpointError naming `file` and the first bad keys, if anything did not match."""
    if report.missing or report.unexpected or report.mismatched:
        raise CheckpointError(f"{file}: CLIP weights do not fit the model its config describes: "
                              f"{report.problems()}; is the config file the one saved with these weights?")
