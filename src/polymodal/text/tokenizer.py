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

from ..errors import CheckpointError, ConfigError
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


class WordTokenizer(Tokenizer):
    """Lower-cased word vocabulary with `<pad> <bos> <eos> <unk>` at ids 0-3."""

    def __init__(self, words: list[str]):
        if list(words[:4]) != list(SPECIALS):
            raise CheckpointError(f"word vocabulary must start with {SPECIALS}, got {words[:4]}; "
                                  f"re-save the model (its tokenizer was edited or comes from elsewhere)")
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


class HFBackedTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (`self.hf`) with pad, bos, eos at ids 0-2, stored whole inside our
    tokenizer.json as `{"type": kind, "hf": <its JSON>}`; subclasses check the vocabulary in `__init__`."""

    kind = ""
    hf: Any

    def __len__(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Token ids without <bos>/<eos>."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ids[:max_len] if max_len is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        kept = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id) and 0 <= i < len(self):
                kept.append(i)
        return self.hf.decode(kept, skip_special_tokens=True).strip()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "hf": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HFBackedTokenizer:
        from tokenizers import Tokenizer as HF

        try:
            hf = HF.from_str(json.dumps(data["hf"]))
        except Exception as err:  # noqa: BLE001 - the Rust side raises a plain Exception on bad JSON
            raise CheckpointError(f"{cls.kind} tokenizer: the embedded HF tokenizer does not load ({err})") from None
        return cls(hf)


class BPETokenizer(HFBackedTokenizer):
    """Byte-level BPE through Hugging Face `tokenizers`, with `<pad> <bos> <eos> <unk>` at ids 0-3.

    Text is NFKC-normalized and lower-cased (as the word vocabulary does), then split GPT-2 style
    into bytes, so no word is ever unknown. The HF tokenizer is stored whole inside our
    tokenizer.json as `{"type": "bpe", "hf": <the HF tokenizer JSON>}`.

    Example:
        >>> tok = BPETokenizer.build(["a red circle", "a blue square"] * 5, vocab_size=300)
        >>> tok.decode(tok.encode("A red square"))
        'a red square'
        >>> tok.decode(tok.encode("a purple cube")) == "a purple cube"  # unseen words: byte pieces
        True
    """

    kind = "bpe"

    def __init__(self, hf: Any):
        ids = [hf.token_to_id(s) for s in SPECIALS]
        if ids != list(range(len(SPECIALS))):
            raise CheckpointError(f"BPE tokenizer: {SPECIALS} must have ids 0-3, got {ids}; "
                                  f"train it with BPETokenizer.build (a foreign vocabulary such as GPT-2's "
                                  f"has no such specials)")
        self.hf = hf

    @classmethod
    def build(cls, captions: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2) -> BPETokenizer:
        """Train on `captions`; merging stops early when the corpus has no pair left to merge."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE(unk_token=UNK))
        hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        hf.decoder = decoders.ByteLevel()
        # Specials first, so that they get ids 0-3; the byte alphabet next, so that every text encodes.
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(list(captions), trainer)
        return cls(hf)



def build_tokenizer(kind: str, captions: Iterable[str], min_count: int = 1, max_vocab: int = 10000,
                    bpe_vocab_size: int = 1000) -> Tokenizer:
    """Train the tokenizer `kind` ("word" or "bpe", i.e. `model.tokenizer`) on training captions.

    Example:
        >>> len(build_tokenizer("word", ["a red circle"]))
        7
    """
    TOKENIZERS.get(kind)  # unknown kind -> ConfigError with a did-you-mean
    if kind == "hf":
        raise ConfigError("model.tokenizer=hf is a pretrained LM's own tokenizer: it comes with init_lm_from "
                          "(a folder with its tokenizer.json) and is never trained; use word or bpe")
    if kind == "bpe":
        return BPETokenizer.build(captions, vocab_size=bpe_vocab_size)
    return WordTokenizer.build(captions, min_count=min_count, max_size=max_vocab)


def tokenizer_from_dict(data: dict[str, Any], source: str = "tokenizer.json") -> Tokenizer:
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in TOKENIZERS:
        raise CheckpointError(f"{source}: unknown tokenizer type {kind!r}; expected one of {TOKENIZERS.names()}")
    try:
        return TOKENIZERS.get(kind).from_dict(data)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: malformed tokenizer ({err}); re-save the model") from None
    except CheckpointError as err:  # name the file the bad vocabulary came from
        raise CheckpointError(f"{source}: {err}") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: tokenizer.json missing; the model directory is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-save the model") from None
    return tokenizer_from_dict(data, str(path))

