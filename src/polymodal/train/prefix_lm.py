"""Task `prefix_lm`: train the decoder-only image-prefix LM on image-caption pairs.

`init_lm_from` starts the LM from a text-only `lm_pretrain` run (its tokenizer and LM sizes come
along) or from a local GPT-2 or Llama-family (SmolLM2) Hugging Face folder (architecture from its
config.json's `model_type`, tokens from its own tokenizer.json, text/hf_tokenizer.py). `freeze_lm`
trains only the vision side; `model.encoder: {name: hf_vision, pretrained: FOLDER}` takes a ViT /
SigLIP tower as the image encoder (docs/pretrained.md).

    polymodal train configs/prefix_lm.yaml [init_lm_from=runs/lm_pretrain]

Example:
    >>> from polymodal.train.tasks import load_task_config
    >>> task, cfg = load_task_config(None, ["task=prefix_lm", "init_lm_from=runs/lm_pretrain"])
    >>> task is train_prefix_lm, cfg.init_lm_from
    (True, 'runs/lm_pretrain')
    >>> task(cfg)["best"]  # trains  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import TOKENIZER_FILE, read_model_dir
from ..config import DataConfig, DecoderConfig, ModelConfig, TrainConfig, from_dict
from ..data.datasets import load_split
from ..data.records import SkipReport
from ..errors import ConfigError
from ..models.prefix_lm import PrefixConfig, PrefixLM
from ..nn.gpt2 import is_gpt2_folder, read_gpt2_config
from ..nn.llama import LlamaDims, is_llama_folder, read_llama_config
from ..text.hf_tokenizer import HFTokenizer
from ..text.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .captioning import fit_captioner
from .controls import ControlsConfig, load_grown, with_controls
from .pretraining import PretrainConfig, QADataConfig, pretrain_region_encoder


@dataclass
class PrefixLMExperimentConfig:
    task: str = "prefix_lm"
    seed: int = 0
    init_lm_from: str = ""           # an lm_pretrain / prefix_lm model or run dir, or a GPT-2 / Llama HF folder
    init_from: str = ""              # a trained prefix_lm model or run dir to go on from (its sizes, vocabulary)
    freeze_lm: bool = False          # train only the encoder and the projector (LLaVA stage 1)
    model: ModelConfig = field(default_factory=ModelConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # steps > 0: start from a region encoder
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)  # trained caption controls (train/controls.py)


def _folder_tokenizer(source: Path, vocab_size: int) -> Tokenizer:
    """The tokenizer.json beside a Hugging Face LM's weights, checked against its vocabulary size: the LM's
    own (a Hugging Face tokenizer, SmolLM2's) or a polymodal one with the same vocabulary."""
    file = source / TOKENIZER_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: missing; a Hugging Face LM folder needs its tokenizer.json (the LM's own, or "
                          f"a polymodal one with the same vocabulary)")
    try:
        foreign = "type" not in json.loads(file.read_text(encoding="utf-8"))  # HF's has "model", ours "type"
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{file}: unreadable ({type(err).__name__}: {err})") from None
    tokenizer = HFTokenizer.from_file(file) if foreign else load_tokenizer(file)
    if vocab_size != len(tokenizer):
        raise ConfigError(f"{source}: tokenizer.json and config.json disagree on the vocabulary size")
    return tokenizer


def _lm_source(cfg: PrefixLMExperimentConfig) -> tuple[DecoderConfig, Tokenizer, LlamaDims | None]:
    """The decoder sizes, the tokenizer and (a Llama-family LM) its architecture dictated by `init_lm_from`.

    The caller's config is not touched.
    """
    source, decoder = Path(cfg.init_lm_from), copy.deepcopy(cfg.model.decoder)
    if is_llama_folder(source):
        llama = read_llama_config(source)
        decoder.hidden_dim, decoder.num_layers = llama.hidden_dim, llama.num_layers
        decoder.num_heads, decoder.max_positions = llama.num_heads, llama.max_positions
        return decoder, _folder_tokenizer(source, llama.vocab_size), llama
    if is_gpt2_folder(source):
        dims = read_gpt2_config(source)
        tokenizer = _folder_tokenizer(source, dims.pop("vocab_size"))
        for key, value in dims.items():
            setattr(decoder, key, value)
        return decoder, tokenizer, None
    config, tokenizer = read_model_dir(source)
    if tokenizer is None:
        raise ConfigError(f"{source}: no tokenizer.json; init_lm_from needs the LM's tokenizer")
    saved = from_dict(DecoderConfig, config["model"]["decoder"], f"{source}/config.json:model.decoder")
    for key in ("hidden_dim", "num_layers", "num_heads", "max_positions"):
        setattr(decoder, key, getattr(saved, key))
    llama = config.get("prefix", {}).get("lm")
    return decoder, tokenizer, from_dict(LlamaDims, llama, f"{source}/config.json:prefix.lm") if llama else None


def _pretrain_encoder(cfg: PrefixLMExperimentConfig, model_cfg: ModelConfig, progress: bool) -> None:
    """Start the image encoder from one pretrained to name the colour, shape and size under each grid cell
    (train/pretraining.py): features that keep attributes apart, so unseen colour-shape pairs are named right."""
    if cfg.pretrain.steps <= 0 or model_cfg.encoder.pretrained:
        return
    if cfg.data.format != "shapes":
        tqdm.write("encoder pretraining: skipped (region pretraining learns from Shapes World scenes; "
                   "the encoder trains with the captions)")
        return
    data = QADataConfig(format="shapes", path=cfg.data.path, n=cfg.data.n, seed=cfg.data.seed,
                        render_size=cfg.data.render_size, train_split=cfg.data.train_split)
    tqdm.write(f"encoder pretraining: {cfg.pretrain.steps} steps naming the object under each grid cell")
    model_cfg.encoder.pretrained = str(pretrain_region_encoder(model_cfg.encoder, model_cfg.image_size, data,
                                                               cfg.pretrain, cfg.seed, progress))


def train_prefix_lm(cfg: PrefixLMExperimentConfig, progress: bool = True,
                    stop_at: int | None = None) -> dict[str, Any]:
    """Train a PrefixLM as configured; the best model lands in `{train.out_dir}/model`."""
    report = SkipReport(source="training data")
    train_records = load_split(cfg.data, cfg.data.train_split, report)
    model_cfg, prefix_cfg = copy.deepcopy(cfg.model), copy.deepcopy(cfg.prefix)
    start = PrefixLM.from_pretrained(cfg.init_from) if cfg.init_from else None
    if start is not None:  # go on from a trained prefix LM: its sizes and vocabulary
        model_cfg, tokenizer, prefix_cfg = start.cfg, start.tokenizer, copy.deepcopy(start.prefix_cfg)
    elif cfg.init_lm_from:
        model_cfg.decoder, tokenizer, prefix_cfg.lm = _lm_source(cfg)
    else:
        tokenizer = build_tokenizer(model_cfg.tokenizer, (c for r in train_records for c in r.captions),
                                    cfg.data.min_count, cfg.data.max_vocab, model_cfg.bpe_vocab_size)
    wrap = None
    if cfg.controls.enabled:
        if cfg.init_lm_from and start is None:
            raise ConfigError("controls with init_lm_from: the LM's vocabulary has no control tokens; start from a "
                              "prefix_lm model (init_from) or from scratch")
        prefix_cfg.controls, tokenizer, wrap = with_controls(cfg.controls, cfg.data, model_cfg, tokenizer, cfg.seed)
        prefix_cfg.control_grid = cfg.controls.grid
        prefix_cfg.focus_marker = prefix_cfg.focus_marker or (cfg.controls.marker and "focus" in prefix_cfg.controls)
    if start is None:
        _pretrain_encoder(cfg, model_cfg, progress)
    torch.manual_seed(cfg.seed)
    model = PrefixLM(model_cfg, tokenizer, prefix_cfg)
    if start is not None:
        tqdm.write(f"initialised from {cfg.init_from}: {load_grown(model, start.state_dict())} tensors")
    elif cfg.init_lm_from:
        loaded = model.load_lm(cfg.init_lm_from)
        tqdm.write(f"LM initialised from {cfg.init_lm_from}: {getattr(loaded, 'loaded', loaded)} tensors")
    if cfg.freeze_lm:
        for p in model.lm.parameters():
            p.requires_grad_(False)
    summary = fit_captioner(model, cfg, train_records, report, progress, stop_at, wrap_train=wrap)
    summary["lm_parameters"] = sum(p.numel() for p in model.lm.parameters())
    return summary


train_prefix_lm.config_cls = PrefixLMExperimentConfig  # type: ignore[attr-defined]
