"""One tokenizer interface; the word vocabulary built from training captions.

Example:
    >>> tok = WordTokenizer.build(["A red circle.", "a blue square"])
    >>> tok.decode(tok.encode("a red square"))
    'a red square'
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..registry import TOKENIZERS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

# Words are runs of letters/digits/apostrophes; punctuation other than commas is dropped,
# commas are kept as their own token because Shapes World lists objects with them.
_TOKEN_RE = re.compile(r"[a-z0-9']+|,")


def split_words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


class Tokenizer:
    """Interface shared by every tokenizer: ids of the specials, encode, decode, save."""

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    def __len__(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")


@TOKENIZERS.register("word")
class WordTokenizer(Tokenizer):
    """Lower-cased word vocabulary with `<pad> <bos> <eos> <unk>` at ids 0-3."""

    def __init__(self, words: list[str]):
        if list(words[:4]) != list(SPECIALS):
            raise CheckpointError(f"word vocabulary must start with {SPECIALS}, got {words[:4]}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int = 10000) -> WordTokenizer:
        """Most frequent words first (ties alphabetical, so the vocabulary is deterministic)."""
        counts = Counter(w for c in captions for w in split_words(c))
        ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + ranked[: max(max_size - len(SPECIALS), 0)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Word ids without <bos>/<eos>; unknown words map to <unk>."""
        ids = [self.index.get(w, self.unk_id) for w in split_words(text)]
        return ids[:max_len] if max_len is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words).replace(" ,", ",")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "words": self.words}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        return cls(list(data["words"]))


def tokenizer_from_dict(data: dict[str, Any], source: str = "tokenizer.json") -> Tokenizer:
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in TOKENIZERS:
        raise CheckpointError(f"{source}: unknown tokenizer type {kind!r}; expected one of {TOKENIZERS.names()}")
    try:
        return TOKENIZERS.get(kind).from_dict(data)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: malformed tokenizer ({err}); re-save the model") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: tokenizer.json missing; the model directory is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-save the model") from None
    return tokenizer_from_dict(data, str(path))

