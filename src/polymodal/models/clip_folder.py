"""Pretrained CLIP from a local folder -> a `DualEncoder` (CLIP vision tower + `clip_text` tower).

Two layouts are read, never downloaded:

- Hugging Face `CLIPModel` (`save_pretrained`): config.json (`model_type: clip`) + model.safetensors
  (or pytorch_model.bin) + the tokenizer (tokenizer.json, or vocab.json + merges.txt).
- OpenCLIP: a model config JSON (`embed_dim`, `vision_cfg`, `text_cfg`, as in open_clip's
  model_configs/, or the hub's open_clip_config.json with `model_cfg` + `preprocess_cfg`) + the state
  dict as one .safetensors or .bin file + the CLIP tokenizer files.

The weights go through the explicit key maps of nn/clip_keys.py; anything that does not fit raises one
`CheckpointError` naming the file and the keys. `.bin` files are read with `torch.load(weights_only=True)`.

Example:
    A tiny random OpenCLIP-named checkpoint, written here (a real one: ViT-B-32, 302 tensors):

    >>> import json, tempfile
    >>> from safetensors.torch import save_file
    >>> from polymodal.nn.clip import toy_clip_tokenizer
    >>> from polymodal.nn.clip_keys import openclip_key_map
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = Path(tmp.name)
    >>> cfg = {"embed_dim": 16, "quick_gelu": True, "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32,
    ...        "layers": 1, "head_width": 8}, "text_cfg": {"context_length": 8, "vocab_size": 537, "width": 32,
    ...        "heads": 4, "layers": 1}}
    >>> _ = (folder / "toy.json").write_text(json.dumps(cfg))
    >>> toy_clip_tokenizer().save(str(folder / "tokenizer.json"))
    >>> ours = build_dual_encoder(read_openclip_config(folder / "toy.json")).state_dict()
    >>> theirs = {}
    >>> for key, src in openclip_key_map(1, 1).items():
    ...     theirs[src.keys[0]] = ours[key].T.contiguous() if src.transpose else ours[key]
    >>> save_file(theirs, str(folder / "open_clip_model.safetensors"))
    >>> model = load_clip_folder(folder)
    >>> model.embed_texts(["a red circle"]).shape, model.cfg.image_size
    (torch.Size([1, 16]), 32)
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_safetensors
from ..config import EncoderConfig
from ..errors import CheckpointError
from ..nn.clip import CLIPVisionConfig
from ..nn.clip_keys import check_report, convert_state, hf_key_map, openclip_key_map
from ..nn.text_encoders import TextEncoderConfig
from .dual_encoder import DualEncoder, DualEncoderConfig

_WEIGHTS = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")
# OpenCLIP options this loader implements, at their values; a config asking for others is refused.
_OC_VISION_DEFAULTS = {"attentional_pool": False, "no_ln_pre": False, "final_ln_after_pool": False,
                       "pool_type": "tok", "pos_embed_type": "learnable", "ls_init_value": None,
                       "timm_model_name": None, "qk_norm": False, "block_type": None, "act_kwargs": None,
                       "norm_kwargs": None}
_OC_TEXT_DEFAULTS = {"embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
                     "pool_type": "argmax", "proj_type": "linear", "proj_bias": False, "ls_init_value": None,
                     "hf_model_name": None, "qk_norm": False, "block_type": None, "mlp_ratio": 4.0,
                     "act_kwargs": None, "norm_kwargs": None}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return data


def _openclip_config_file(folder: Path) -> Path | None:
    for file in sorted(folder.glob("*.json")):
        if file.name in ("tokenizer.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json"):
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and ("model_cfg" in data or {"vision_cfg", "text_cfg"} <= set(data)):
            return file
    return None


def clip_layout(path: str | Path) -> str | None:
    """"hf" or "openclip" if `path` is a folder of CLIP weights in that layout, else None (reads JSON only)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / "config.json").is_file():
        try:
            data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if isinstance(data, dict) and "architecture" not in data and (
                data.get("model_type") == "clip" or {"vision_config", "text_config"} <= set(data)):
            return "hf"
    return "openclip" if _openclip_config_file(folder) is not None else None


def _dims(file: Path, section: dict[str, Any], keys: dict[str, str], where: str) -> dict[str, Any]:
    try:
        return {ours: section[theirs] for ours, theirs in keys.items() if theirs in section}
    except TypeError:
        raise CheckpointError(f"{file}: {where} is not a JSON object") from None


def _require(file: Path, values: dict[str, Any], where: str, needed: tuple[str, ...]) -> None:
    lacking = [k for k in needed if k not in values]
    if lacking:
        raise CheckpointError(f"{file}: {where} lacks {', '.join(lacking)}; not a CLIP config")


def read_hf_config(folder: str | Path) -> DualEncoderConfig:
    """Hugging Face `CLIPConfig` (config.json) -> the DualEncoderConfig of the same model."""
    file = Path(folder) / "config.json"
    data = _read_json(file)
    vis, txt = data.get("vision_config") or {}, data.get("text_config") or {}
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    _require(file, vis, "vision_config", need + ("patch_size", "image_size"))
    _require(file, txt, "text_config", need + ("max_position_embeddings",))
    if txt["intermediate_size"] != 4 * txt["hidden_size"]:
        raise CheckpointError(f"{file}: text_config.intermediate_size={txt['intermediate_size']} is not supported "
                              f"(the text MLP must be 4 * hidden_size)")
    if txt.get("layer_norm_eps", 1e-5) != 1e-5:
        raise CheckpointError(f"{file}: text_config.layer_norm_eps={txt['layer_norm_eps']} is not supported (1e-5)")
    vit = CLIPVisionConfig(width=vis["hidden_size"], layers=vis["num_hidden_layers"], heads=vis["num_attention_heads"],
                           patch=vis["patch_size"], image_size=vis["image_size"],
                           mlp_ratio=vis["intermediate_size"] / vis["hidden_size"],
                           act=vis.get("hidden_act", "quick_gelu"), eps=vis.get("layer_norm_eps", 1e-5))
    text = TextEncoderConfig(name="clip_text", width=txt["hidden_size"], layers=txt["num_hidden_layers"],
                             heads=txt["num_attention_heads"], max_len=txt["max_position_embeddings"],
                             dropout=0.0, path=str(folder), freeze=False, act=txt.get("hidden_act", "quick_gelu"))
    return _config(vit, text, int(data.get("projection_dim", 512)), float(data.get("logit_scale_init_value", 2.6592)))


def read_openclip_config(file: str | Path) -> DualEncoderConfig:
    """An OpenCLIP model config JSON (ViT image tower, built-in text tower) -> the DualEncoderConfig."""
    file = Path(file)
    data = _read_json(file)
    model = data.get("model_cfg", data)
    pre = data.get("preprocess_cfg", {})
    vis, txt = model.get("vision_cfg"), model.get("text_cfg")
    if not isinstance(vis, dict) or not isinstance(txt, dict) or "embed_dim" not in model:
        raise CheckpointError(f"{file}: not an OpenCLIP model config (needs embed_dim, vision_cfg, text_cfg)")
    for section, defaults, where in ((vis, _OC_VISION_DEFAULTS, "vision_cfg"), (txt, _OC_TEXT_DEFAULTS, "text_cfg")):
        for key, want in defaults.items():
            if section.get(key, want) != want:
                raise CheckpointError(f"{file}: {where}.{key}={section[key]!r} is not supported (this loader "
                                      f"implements {key}={want!r})")
    if not isinstance(vis.get("layers", 12), int):
        raise CheckpointError(f"{file}: vision_cfg.layers={vis['layers']} is a ResNet image tower; only ViT is supported")
    act = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
    width = int(vis.get("width", 768))
    vit = CLIPVisionConfig(width=width, layers=int(vis.get("layers", 12)), heads=width // int(vis.get("head_width", 64)),
                           patch=int(vis.get("patch_size", 16)), image_size=int(vis.get("image_size", 224)),
                           mlp_ratio=float(vis.get("mlp_ratio", 4.0)), act=act,
                           mean=tuple(pre.get("mean", vis.get("image_mean", CLIPVisionConfig.mean))),
                           std=tuple(pre.get("std", vis.get("image_std", CLIPVisionConfig.std))))
    text = TextEncoderConfig(name="clip_text", width=int(txt.get("width", 512)), layers=int(txt.get("layers", 12)),
                             heads=int(txt.get("heads", 8)), max_len=int(txt.get("context_length", 77)), dropout=0.0,
                             path=str(file.parent), freeze=False, act=act)
    return _config(vit, text, int(model["embed_dim"]), math.log(1 / 0.07))


def _config(vit: CLIPVisionConfig, text: TextEncoderConfig, embed_dim: int, logit_scale: float) -> DualEncoderConfig:
    return DualEncoderConfig(encoder=EncoderConfig(name="small_cnn"), text=text, image_size=vit.image_size,
                             embed_dim=embed_dim, pooling="cls", proj_bias=False, vit=vit,
                             init_temperature=math.exp(-logit_scale))


def build_dual_encoder(cfg: DualEncoderConfig) -> DualEncoder:
    """An untrained DualEncoder with CLIP's towers; the tokenizer is read from `cfg.text.path`."""
    return DualEncoder(cfg, None).eval()


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        state: Any = read_safetensors(file)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many kinds on a bad or pickled-object file
            raise CheckpointError(f"{file}: not a readable weights-only state dict ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # an OpenCLIP training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if len(found) == 1:
        return found[0]
    what = f"{len(found)} candidates ({', '.join(p.name for p in found)}): keep one" if found else "none found"
    raise CheckpointError(f"{folder}: no CLIP weights file ({' or '.join(_WEIGHTS[:2])}); {what}")


def load_clip_folder(path: str | Path) -> DualEncoder:
    """Load a Hugging Face or OpenCLIP CLIP folder into a DualEncoder (eval mode), checked key by key."""
    folder = Path(path)
    layout = clip_layout(folder)
    if layout is None:
        raise CheckpointError(f"{folder}: not a CLIP checkpoint folder (no config.json with model_type 'clip', "
                              f"no OpenCLIP model config JSON); see docs/pretrained.md")
    if layout == "hf":
        cfg = read_hf_config(folder)
    else:
        cfg = read_openclip_config(_openclip_config_file(folder))  # type: ignore[arg-type]
    model = build_dual_encoder(cfg)
    file = _weights_file(folder)
    theirs = _read_weights(file)
    keys = (hf_key_map if layout == "hf" else openclip_key_map)(cfg.vit.layers, cfg.text.layers)  # type: ignore[union-attr]
    converted, report = convert_state(theirs, keys, model.state_dict())
    check_report(report, str(file))
    model.load_state_dict(converted)
    return model.eval()
