"""Load a GPT-2-format Hugging Face folder (config.json + model.safetensors) into `TransformerLM`.

An explicit key map, checked both ways: every GPT-2 tensor must land somewhere (else "unexpected"),
every LM tensor must be filled (else "missing"), shapes must agree. GPT-2 stores its linear layers
as `Conv1D`, whose weight is (in, out): the transpose of `nn.Linear`'s (out, in). Nothing is
downloaded; the folder is a local copy the user points at.

Example:
    A tiny GPT-2 folder, written here through the key map (a real one: GPT-2 small gives 148 tensors):

    >>> import json, tempfile
    >>> from safetensors.torch import save_file
    >>> folder = tempfile.TemporaryDirectory()
    >>> theirs = TransformerLM(50, 32, 2, 4, 16, dropout=0.0).state_dict()
    >>> save_file({hf: (theirs[ours].T if transposed else theirs[ours]).contiguous()
    ...            for hf, (ours, transposed) in gpt2_key_map(2).items()}, f"{folder.name}/model.safetensors")
    >>> config = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 2, "n_head": 4,
    ...           "n_positions": 16}
    >>> _ = Path(folder.name, "config.json").write_text(json.dumps(config))
    >>> dims = read_gpt2_config(folder.name)
    >>> lm = TransformerLM(dims["vocab_size"], dims["hidden_dim"], dims["num_layers"], dims["num_heads"],
    ...                    dims["max_positions"], dropout=0.0)
    >>> load_gpt2(lm, folder.name).loaded  # 4 + 12 per block
    28
    >>> torch.equal(lm.state_dict()["h.1.mlp.c_fc.weight"], theirs["h.1.mlp.c_fc.weight"])
    True
    >>> folder.cleanup()
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .hf_folder import LoadReport, read_weights
from .transformer import TransformerLM

# Inside block i: GPT-2 name -> (our name, transpose?). Our names are GPT-2's, so only Conv1D transposes.
_LAYER_MAP = {
    "ln_1.weight": ("ln_1.weight", False), "ln_1.bias": ("ln_1.bias", False),
    "attn.c_attn.weight": ("attn.c_attn.weight", True), "attn.c_attn.bias": ("attn.c_attn.bias", False),
    "attn.c_proj.weight": ("attn.c_proj.weight", True), "attn.c_proj.bias": ("attn.c_proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False), "ln_2.bias": ("ln_2.bias", False),
    "mlp.c_fc.weight": ("mlp.c_fc.weight", True), "mlp.c_fc.bias": ("mlp.c_fc.bias", False),
    "mlp.c_proj.weight": ("mlp.c_proj.weight", True), "mlp.c_proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_MAP = {k: (k, False) for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
# Older GPT-2 files store the causal mask as buffers; `lm_head.weight` is the tied copy of `wte`.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(masked_)?bias|lm_head\.weight)$")
# What our blocks compute; a GPT-2 config asking for anything else is refused rather than misread.
_EXPECTED = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
             "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "tie_word_embeddings": True}


GPT2LoadReport = LoadReport  # the name prefix_lm's load_lm reports under


def gpt2_key_map(num_layers: int) -> dict[str, tuple[str, bool]]:
    """GPT-2 key -> (TransformerLM key, transpose) for a model of `num_layers` blocks."""
    mapping = dict(_TOP_MAP)
    for i in range(num_layers):
        mapping.update({f"h.{i}.{k}": (f"h.{i}.{ours}", t) for k, (ours, t) in _LAYER_MAP.items()})
    return mapping


def is_gpt2_folder(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and (data.get("model_type") == "gpt2" or "n_embd" in data)


def read_gpt2_config(path: str | Path) -> dict[str, Any]:
    """GPT-2's config.json -> our decoder sizes: vocab_size, hidden_dim, num_layers, num_heads, max_positions."""
    file = Path(path) / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        dims = {"vocab_size": int(data["vocab_size"]), "hidden_dim": int(data["n_embd"]),
                "num_layers": int(data["n_layer"]), "num_heads": int(data["n_head"]),
                "max_positions": int(data["n_positions"])}
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; a GPT-2 folder holds config.json and model.safetensors") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: not a GPT-2 config ({type(err).__name__}: {err}); it needs "
                              f"vocab_size, n_embd, n_layer, n_head, n_positions") from None
    for key, want in _EXPECTED.items():
        if data.get(key, want) != want:
            raise CheckpointError(f"{file}: {key}={data[key]!r} is not supported (this loader implements "
                                  f"{key}={want!r})")
    if data.get("n_inner") not in (None, 4 * dims["hidden_dim"]):
        raise CheckpointError(f"{file}: n_inner={data['n_inner']} is not supported (MLP width must be 4 * n_embd)")
    return dims


def load_gpt2(lm: TransformerLM, path: str | Path, strict: bool = True) -> GPT2LoadReport:
    """Copy a GPT-2 folder's weights into `lm` through the key map; raise on any mismatch when strict.

    Accepts both GPT2Model keys (`h.0...`) and GPT2LMHeadModel keys (`transformer.h.0...`).
    """
    folder = Path(path)
    state = {k.removeprefix("transformer."): v for k, v in read_weights(folder).items()}
    mapping, own = gpt2_key_map(len(lm.h)), lm.state_dict()
    report, converted = GPT2LoadReport(), {}
    for key, tensor in state.items():
        if _IGNORED.match(key):
            report.ignored.append(key)
        elif key not in mapping:
            report.unexpected.append(key)
        else:
            ours, transpose = mapping[key]
            value = tensor.T if transpose else tensor
            if value.shape != own[ours].shape:
                report.mismatched.append(f"{key} {tuple(tensor.shape)} -> {ours} {tuple(own[ours].shape)}")
            else:
                converted[ours] = value.to(own[ours].dtype)
    report.missing = [key for key in mapping if key not in state]
    if "lm_head.weight" in state and "wte.weight" in state and not torch.equal(state["lm_head.weight"],
                                                                               state["wte.weight"]):
        report.unexpected.append("lm_head.weight (not tied to wte; this LM ties its output embedding)")
    if strict and (report.missing or report.unexpected or report.mismatched):
        detail = "; ".join(f"{name} {values[:3]} ({len(values)})" for name, values in
                           (("missing", report.missing), ("unexpected", report.unexpected),
                            ("shape mismatch", report.mismatched)) if values)
        raise CheckpointError(f"{folder}: GPT-2 weights do not fit this LM: {detail}; "
                              f"build the LM with the sizes from read_gpt2_config()")
    lm.load_state_dict(converted, strict=False)
    report.loaded = len(converted)
    return report
