"""CLIP's two towers (Radford et al. 2021, sec. 2.4) in polymodal's own code, for pretrained CLIP weights.

- `CLIPVisionTower`: patches (a bias-free conv) + a class token + learned positions -> `ln_pre` ->
  pre-LN blocks -> `ln_post` over every token: (B, 1 + N, W). The dual encoder pools the class
  token (`pooling: cls`) and projects it without a bias.
- `CLIPTextTower`: byte-level BPE ids (`tokenize`, the folder's own CLIP tokenizer through the
  `tokenizers` library) + learned positions -> causal pre-LN blocks -> `ln_final`, pooled at the
  end-of-text token: (B, W).

The blocks are GPT-2-shaped like nn/transformer.py (`ln_1`, `attn.c_attn` fused q|k|v, `attn.c_proj`,
`ln_2`, `mlp.c_fc`, `mlp.c_proj`; the same `Attention`) with CLIP's `quick_gelu`. Images come in
ImageNet-normalized like everywhere in polymodal (data/images.py); the vision tower re-normalizes them
with CLIP's own mean and std, an exact affine map. Key maps from Hugging Face and OpenCLIP
checkpoints: nn/clip_keys.py.

Example:
    >>> vision = CLIPVisionTower(CLIPVisionConfig(width=32, layers=1, heads=4, patch=8, image_size=32))
    >>> vision(torch.zeros(2, 3, 32, 32)).shape  # class token + 4 x 4 patches
    torch.Size([2, 17, 32])
    >>> tower = CLIPTextTower(TextEncoderConfig(name="clip_text", width=32, layers=1, heads=4, max_len=16),
    ...                       tokenizer=toy_clip_tokenizer())
    >>> ids = tower.tokenize(["a red circle", "a square"])
    >>> ids[0].tolist() == [tower.bos_id, *tower.bpe.encode("a red circle", add_special_tokens=False).ids,
    ...                     tower.eos_id]
    True
    >>> tower(ids).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ConfigError, InputError
from .text_encoders import HF_TOWER_DIR, TextEncoderConfig
from .transformer import Attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics (both HF and OpenCLIP)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BOS_NAMES, _EOS_NAMES = ("<|startoftext|>", "<start_of_text>"), ("<|endoftext|>", "<end_of_text>")
# CLIP's pre-tokenizer split (Hugging Face's CLIPConverter, OpenCLIP's SimpleTokenizer pattern).
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass
class CLIPVisionConfig:
    width: int = 768
    layers: int = 12
    heads: int = 12
    patch: int = 32
    image_size: int = 224
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"            # quick_gelu (OpenAI's weights) | gelu (most LAION / OpenCLIP weights)
    eps: float = 1e-5                  # LayerNorm epsilon (1e-5 in every released CLIP)
    mean: tuple[float, ...] = CLIP_MEAN  # the pixel statistics the weights were trained with
    std: tuple[float, ...] = CLIP_STD


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x) (its released weights were trained with it)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class CLIPMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "quick_gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"CLIP activation {act!r}: use {' or '.join(ACTIVATIONS)}")
        self.c_fc, self.c_proj, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class CLIPBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-5, act: str = "quick_gelu"):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads, 0.0)
        self.ln_2, self.mlp = nn.LayerNorm(dim, eps=eps), CLIPMLP(dim, hidden, act)

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), is_causal=is_causal)[0]
        return x + self.mlp(self.ln_2(x))


class CLIPVisionTower(nn.Module):
    """CLIP's ViT; forward(images (B, 3, S, S), ImageNet-normalized) -> tokens (B, 1 + N, W) after ln_post."""

    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        if cfg.image_size % cfg.patch:
            raise ConfigError(f"model.vit: image_size {cfg.image_size} is not a multiple of patch {cfg.patch}")
        w, n = cfg.width, (cfg.image_size // cfg.patch) ** 2
        self.cfg, self.out_dim = cfg, w
        self.patch_embed = nn.Conv2d(3, w, cfg.patch, cfg.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.position_embedding = nn.Parameter(torch.randn(n + 1, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w, eps=cfg.eps)
        self.blocks = nn.ModuleList(CLIPBlock(w, cfg.heads, int(w * cfg.mlp_ratio), cfg.eps, cfg.act)
                                    for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(w, eps=cfg.eps)
        # (x * s_in + m_in - m) / s = x * scale + shift: ImageNet-normalized -> CLIP-normalized
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(cfg.std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
        self.register_buffer("pixel_scale", scale.view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", shift.view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise InputError(f"CLIP vision tower takes {self.cfg.image_size} px images, got "
                             f"{tuple(images.shape[-2:])}")
        return self.forward_normalized(images * self.pixel_scale + self.pixel_shift)  # (B, 1 + N, W)

    def forward_normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images already normalized with CLIP's mean and std (as CLIP's own preprocessing gives them)."""
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, N, W)
        cls = self.class_embedding.to(x.dtype).expand(len(x), 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.position_embedding.to(x.dtype))  # (B, 1 + N, W)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def _special_id(bpe: Any, names: tuple[str, ...], what: str, source: str) -> int:
    for name in names:
        found = bpe.token_to_id(name)
        if found is not None:
            return int(found)
    raise CheckpointError(f"{source}: the CLIP tokenizer has no {what} token ({' or '.join(names)})")


def read_clip_tokenizer(folder: str | Path) -> Any:
    """The CLIP BPE of a folder as a `tokenizers.Tokenizer`: tokenizer.json, or vocab.json + merges.txt.

    Built from vocab + merges exactly as Hugging Face's CLIPConverter does (NFC, whitespace runs -> " ",
    lower case; CLIP's split; byte-level; "</w>" ends a word). Special tokens are added by the tower.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    folder = Path(folder)
    try:
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt); copy "
                              f"the tokenizer files of the checkpoint into the folder") from None
    except Exception as err:  # JSON, encoding, and the bare Exceptions `tokenizers` raises
        raise CheckpointError(f"{folder}: unreadable CLIP tokenizer files ({err})") from None
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    bpe = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token="<|endoftext|>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return bpe


def toy_clip_tokenizer(words: tuple[str, ...] = ("a", "red", "circle", "square", "blue")) -> Any:
    """A tiny CLIP-style BPE (bytes, bytes + "</w>", `words` + "</w>", the two specials), for examples and tests."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = list(ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    tokens = alphabet + [c + "</w>" for c in alphabet]
    for word in words:  # left-to-right merges: "r" "e" -> "re", "re" "d</w>" -> "red</w>"
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens + ["<|startoftext|>", "<|endoftext|>"]))}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                           encoding="utf-8")
        return read_clip_tokenizer(tmp)


class CLIPTextTower(nn.Module):
    """CLIP's causal text transformer; `tokenize` -> ids (B, T), forward(ids) -> (B, W) at end-of-text.

    The tokenizer comes from `cfg.path` (a CLIP folder), from `saved_dir/text_tower/` (a saved dual
    encoder) or, in examples and tests, as a ready `tokenizers.Tokenizer`. `cfg.max_len` is CLIP's
    context length (77 for the released models) and the number of learned positions.
    """

    def __init__(self, cfg: TextEncoderConfig, tokenizer: Any = None, saved_dir: Path | None = None):
        super().__init__()
        source = str(Path(saved_dir) / HF_TOWER_DIR) if saved_dir is not None else cfg.path
        # A `tokenizers.Tokenizer` may come where the word towers take their WordTokenizer (examples, tests).
        bpe = tokenizer if tokenizer is not None and hasattr(tokenizer, "token_to_id") else None
        if bpe is None:
            if not source:
                raise ConfigError("model.text.name=clip_text: set model.text.path to a CLIP folder")
            bpe = read_clip_tokenizer(source)
        self.cfg, self.bpe, self.out_dim = cfg, bpe, cfg.width
        self.bos_id = _special_id(bpe, _BOS_NAMES, "start-of-text", str(source))
        self.eos_id = self.pad_id = _special_id(bpe, _EOS_NAMES, "end-of-text", str(source))
        # One row per token of the tokenizer (49408 for the released CLIPs); a checkpoint with another
        # vocabulary size is reported as a shape mismatch of the token embedding.
        self.token_embedding = nn.Embedding(bpe.get_vocab_size(with_added_tokens=True), cfg.width)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(CLIPBlock(cfg.width, cfg.heads, 4 * cfg.width, act=cfg.act) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """[start] BPE ids [end], truncated to `max_len` (the end token kept), padded with the end token."""
        if not texts:
            raise InputError("no texts given")
        rows = [[self.bos_id, *e.ids[: self.cfg.max_len - 2], self.eos_id]
                for e in self.bpe.encode_batch(list(texts), add_special_tokens=False)]
        ids = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.cfg.max_len:
            raise InputError(f"CLIP text tower takes at most {self.cfg.max_len} tokens, got {ids.shape[1]}")
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, T, W)
        for block in self.blocks:
            x = block(x, is_causal=True)  # causal: the padding after end-of-text is never seen
        x = self.ln_final(x)
        eot = (ids == self.eos_id).int().argmax(1)  # the first end-of-text token of each row
        return x[torch.arange(len(ids), device=ids.device), eot]  # (B, W)

    def save_extra(self, folder: Path) -> None:
        """Write the tokenizer as text_tower/tokenizer.json (the weights live in model.safetensors)."""
        target = Path(folder) / HF_TOWER_DIR
        target.mkdir(exist_ok=True)
        self.bpe.save(str(target / "tokenizer.json"))


def clip_text(cfg: TextEncoderConfig, tokenizer: Any = None, saved_dir: Path | None = None) -> CLIPTextTower:
    """The TEXT_ENCODERS builder of `clip_text`."""
    return CLIPTextTower(cfg, tokenizer, saved_dir)
