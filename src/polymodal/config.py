"""Typed dataclass configs, YAML files and dotted overrides (`model.decoder.hidden_dim=512`).

Example:
    >>> cfg = load_config(None, ["train.steps=10", "model.decoder.name=seed_lstm"])
    >>> cfg.train.steps, cfg.model.decoder.name
    (10, 'seed_lstm')
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError


@dataclass
class EncoderConfig:
    name: str = "small_cnn"          # a key of registry.ENCODERS
    pretrained: str | None = None     # local .pth/.safetensors file or a torchvision weights name
    freeze: bool = False              # no gradients into the encoder at all
    fine_tune_last_n: int = -1        # train only the last n stages; -1 = all (when not frozen)
    grid: int = 0                     # pool the feature map to grid x grid; 0 keeps it as is
    width: int = 64                   # base channel width of the small CNN


@dataclass
class DecoderConfig:
    name: str = "attention_lstm"      # a key of registry.DECODERS
    embed_dim: int = 256
    hidden_dim: int = 512
    feature_dim: int = 128            # seed model: image feature projected 512 -> 128
    attention_dim: int = 256
    dropout: float = 0.3
    attention_dropout: float | None = None  # transformers: on the attention weights; None = `dropout`. 0 lets a CPU
                                      # use the fused attention kernel (bench/assistant_step.py, docs/benchmarks.md)
    doubly_stochastic: float = 1.0    # weight of the SAT attention regulariser
    max_len: int = 24                 # longest caption generated, in tokens
    num_layers: int = 2               # transformer decoders / prefix LM: blocks
    num_heads: int = 4                # transformer decoders / prefix LM: attention heads (divide hidden_dim)
    max_positions: int = 64           # transformer decoders / prefix LM: learned text positions


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_size: int = 64
    tokenizer: str = "word"           # a key of registry.TOKENIZERS: word | bpe (tasks that build one)
    bpe_vocab_size: int = 1000        # BPE: vocabulary size to train, specials included


@dataclass
class DataConfig:
    format: str = "shapes"            # a key of registry.DATASETS or registry.STREAMS
    path: str | None = None           # annotation file (or Shapes World folder written to disk)
    images: str | None = None         # image root for the annotation file; default: its folder
    train_split: str = "train"
    val_split: str = "val"
    n: int = 5000                     # Shapes World images to generate (all splits together)
    seed: int = 0                     # Shapes World generation seed
    render_size: int = 128            # Shapes World image size on disk
    min_count: int = 1                # vocabulary: drop words rarer than this
    max_vocab: int = 10000
    max_len: int = 24                 # captions are truncated to this many tokens
    preload: bool = True              # decode every image once into memory (small datasets)
    allow_outside_root: bool = False  # accept image paths that leave the image folder ("../x.jpg")
    feature_cache: bool = False       # frozen encoder: compute features once into a memory-mapped cache
    feature_cache_dir: str | None = None  # where caches live; default $POLYMODAL_CACHE/features
    # Streaming formats (webdataset, parquet; data/streams.py): data.path is a shard pattern or folder
    image_column: str = "image"       # parquet: the column of encoded image bytes
    caption_column: str = "caption"   # parquet: the column of captions (a string or a list of strings)
    val_path: str | None = None       # shards the validation/test samples come from; default data.path
    val_samples: int = 256            # samples taken from them (written once to the cache folder)
    vocab_samples: int = 100_000      # the word vocabulary is built from the captions of this many samples


@dataclass
class TrainConfig:
    out_dir: str = "runs/model"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    encoder_lr: float | None = None   # None = same as lr
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 5.0
    amp: bool = False                 # bf16 autocast (CPU or GPU)
    eval_every: int = 250
    eval_batches: int = 8             # validation batches per evaluation (0 = whole split)
    early_stop_patience: int = 0      # evaluations without improvement before stopping; 0 = never
    early_stop_metric: str = "val_loss"
    checkpoint_every: int = 250
    log_every: int = 25
    num_workers: int = 0              # DataLoader worker processes (decoding off the main process)
    persistent_workers: bool = False  # keep workers alive across epochs (with num_workers > 0)
    channels_last: bool = False       # NHWC memory format for images and the encoder
    compile: bool = False             # torch.compile the image encoder (fixed shapes) for training


@dataclass
class ExperimentConfig:
    task: str = "captioning"          # a key of registry.TASKS
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _expected(where: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {what}, got {value!r}; change the value to {what}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints become floats where a float is expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise _expected(where, "a mapping", value)
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _expected(where, "a list", value)
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise _expected(where, "true or false", value)
    if tp in (int, float) and isinstance(value, bool):
        raise _expected(where, "a number", value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _expected(where, _TYPE_NAMES.get(tp, tp.__name__), value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys fail with a did-you-mean."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    obj = cls(**kwargs)
    _check_sizes(obj, where)
    return obj


# Sizes that must be at least 1 wherever they appear (0 would only fail later, deep inside torch).
POSITIVE = frozenset({"batch_size", "image_size", "embed_dim", "hidden_dim", "attention_dim", "feature_dim",
                      "max_len", "num_heads", "num_layers", "max_positions", "width", "render_size", "max_vocab",
                      "bpe_vocab_size", "heads", "dim"})


def _check_sizes(obj: Any, where: str) -> None:
    """Numbers must be finite, sizes and counts not negative (POSITIVE ones at least 1); catches
    `hidden_dim: -5`, `batch_size: 0` or `lr: .nan` before they reach torch."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{where}.{f.name}: must be a finite number, got {value}; set a real value")
        if value < 0 and f.name not in ("fine_tune_last_n",):
            raise ConfigError(f"{where}.{f.name}: must not be negative, got {value}; set a value >= 0")
        if value < 1 and f.name in POSITIVE:
            raise ConfigError(f"{where}.{f.name}: must be at least 1, got {value}; set a positive size")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a nested dict copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: no '='; write it as key=value, e.g. train.steps=100")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section; "
                                  f"override a key inside a section, e.g. train.steps=100")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({str(err).splitlines()[0]}); "
                              f"quote it or fix the value") from None
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass a path to a YAML file (see configs/)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass a YAML config file, e.g. configs/attention_lstm.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; pass a YAML config file, e.g. configs/attention_lstm.yaml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}; it must be a mapping of sections "
                          f"(model, data, train)")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cls: type[T] = ExperimentConfig) -> T:  # type: ignore[assignment]
    """Read a YAML config (or start from defaults), apply overrides, validate every key and type."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, str(path) if path else "config")
