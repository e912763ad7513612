"""Task `prefix_lm`: train the decoder-only image-prefix LM on image-caption pairs.

`init_lm_from` starts the LM from a text-only `lm_pretrain` run (its tokenizer and LM sizes come
along) or from a local GPT-2-format Hugging Face folder (sizes from its config.json; it needs a
polymodal tokenizer.json with the same vocabulary). `freeze_lm` trains only the vision side.

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
from ..text.tokenizer import Tokenizer, build_tokenizer, load_tokenizer
from .captioning import fit_captioner


@dataclass
class PrefixLMExperimentConfig:
    task: str = "prefix_lm"
    seed: int = 0
    init_lm_from: str = ""           # an lm_pretrain / prefix_lm model or run dir, or a GPT-2-format HF folder
    freeze_lm: bool = False          # train only the encoder and the projector (LLaVA stage 1)
    model: ModelConfig = field(default_factory=ModelConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _lm_source(cfg: PrefixLMExperimentConfig) -> tuple[DecoderConfig, Tokenizer]:
    """The decoder sizes and the tokenizer dictated by `init_lm_from` (the caller's config is not touched)."""
    source, decoder = Path(cfg.init_lm_from), copy.deepcopy(cfg.model.decoder)
    if is_gpt2_folder(source):
        if not (source / TOKENIZER_FILE).is_file():
            raise ConfigError(f"{source}: a GPT-2 folder needs a polymodal tokenizer.json with the same vocabulary "
                              f"(<pad> <bos> <eos> <unk> at ids 0-3)")
        tokenizer = load_tokenizer(source / TOKENIZER_FILE)
        dims = read_gpt2_config(source)
        if dims.pop("vocab_size") != len(tokenizer):
            raise ConfigError(f"{source}: tokenizer.json and config.json disagree on the vocabulary size")
        for key, value in dims.items():
            setattr(decoder, key, value)
        return decoder, tokenizer
    config, tokenizer = read_model_dir(source)
    if tokenizer is None:
        raise ConfigError(f"{source}: no tokenizer.json; init_lm_from needs the LM's tokenizer")
    saved = from_dict(DecoderConfig, config["model"]["decoder"], f"{source}/config.json:model.decoder")
    for key in ("hidden_dim", "num_layers", "num_heads", "max_positions"):
        setattr(decoder, key, getattr(saved, key))
    return decoder, tokenizer


def train_prefix_lm(cfg: PrefixLMExperimentConfig, progress: bool = True,
                    stop_at: int | None = None) -> dict[str, Any]:
    """Train a PrefixLM as configured; the best model lands in `{train.out_dir}/model`."""
    report = SkipReport(source="training data")
    train_records = load_split(cfg.data, cfg.data.train_split, report)
    model_cfg = copy.deepcopy(cfg.model)
    if cfg.init_lm_from:
        model_cfg.decoder, tokenizer = _lm_source(cfg)
    else:
        tokenizer = build_tokenizer(model_cfg.tokenizer, (c for r in train_records for c in r.captions),
                                    cfg.data.min_count, cfg.data.max_vocab, model_cfg.bpe_vocab_size)
    torch.manual_seed(cfg.seed)
    model = PrefixLM(model_cfg, tokenizer, cfg.prefix)
    if cfg.init_lm_from:
        loaded = model.load_lm(cfg.init_lm_from)
        tqdm.write(f"LM initialised from {cfg.init_lm_from}: {getattr(loaded, 'loaded', loaded)} tensors")
    if cfg.freeze_lm:
        for p in model.lm.parameters():
            p.requires_grad_(False)
    summary = fit_captioner(model, cfg, train_records, report, progress, stop_at)
    summary["lm_parameters"] = sum(p.numel() for p in model.lm.parameters())
    return summary


train_prefix_lm.config_cls = PrefixLMExperimentConfig  # type: ignore[attr-defined]
