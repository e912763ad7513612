"""Characters for CTC speech recognition: the alphabet, transcript normalisation, greedy and prefix beam decoding.

Id 0 is the CTC blank, ids 1.. are the alphabet's characters (space, apostrophe, a-z by default). Greedy
decoding takes the best symbol of every frame, merges repeats and drops blanks. Prefix beam search
(Hannun et al. 2014, "First-pass large vocabulary continuous speech recognition using bi-directional
recurrent DNNs", section 3.1) keeps the `beam_size` most probable label prefixes, each scored by the
sum over all its alignments (ending in blank or not). With a `Lexicon` a prefix may only grow into words
of the lexicon: a letter must continue some word, a space or the end must close one.

Example:
    >>> vocab = CharVocab()
    >>> vocab.encode("A red circle!")
    [3, 1, 20, 7, 6, 1, 5, 11, 20, 5, 14, 7]
    >>> probs = np.full((5, len(vocab) + 1), 1e-3); probs[[0, 1, 2, 3, 4], [3, 3, 0, 3, 0]] = 1.0
    >>> greedy_decode(np.log(probs), vocab), beam_decode(np.log(probs), vocab)
    ('aa', 'aa')
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
BLANK = 0
_NEG = -math.inf


class CharVocab:
    """The output symbols of a CTC model: blank at 0, then one id per character of `alphabet`."""

    def __init__(self, alphabet: str = ALPHABET):
        if len(set(alphabet)) != len(alphabet) or " " not in alphabet:
            raise CheckpointError(f"CTC alphabet {alphabet!r}: needs distinct characters and a space; re-save the model")
        self.alphabet = alphabet
        self.index = {c: i + 1 for i, c in enumerate(alphabet)}
        self._drop = re.compile("[^" + re.escape(alphabet) + "]")

    def __len__(self) -> int:
        """Characters, the blank not counted."""
        return len(self.alphabet)

    def normalize(self, text: str) -> str:
        """Lowercase; characters outside the alphabet become spaces; single spaces, none at the ends.

        Example:
            >>> CharVocab().normalize("  What colour is it?")
            'what colour is it'
        """
        return " ".join(self._drop.sub(" ", text.lower()).split())

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in self.normalize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (no blanks, repeats already merged) -> text."""
        return "".join(self.alphabet[i - 1] for i in ids if 0 < i <= len(self.alphabet))


def greedy_decode(log_probs: np.ndarray, vocab: CharVocab) -> str:
    """Best path: the most likely symbol per frame (T, V), repeats merged, blanks dropped."""
    best = np.asarray(log_probs).argmax(-1)
    keep = [int(s) for i, s in enumerate(best) if s != BLANK and (i == 0 or s != best[i - 1])]
    return " ".join(vocab.decode(keep).split())


@dataclass
class Lexicon:
    """The words a beam may spell, and every prefix of them.

    Example:
        >>> lex = Lexicon.build(["a red circle", "a rod"])
        >>> lex.words == {"a", "red", "rod", "circle"}, "ci" in lex.prefixes, "rd" in lex.prefixes
        (True, True, False)
    """

    words: set[str]
    prefixes: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.prefixes = {w[:i] for w in self.words for i in range(len(w) + 1)}

    @classmethod
    def build(cls, texts: Iterable[str], vocab: CharVocab | None = None) -> Lexicon:
        vocab = vocab or CharVocab()
        return cls({w for t in texts for w in vocab.normalize(t).split()})


def _logadd(a: float, b: float) -> float:
    if a == _NEG:
        return b
    if b == _NEG:
        return a
    hi = max(a, b)
    return hi + math.log1p(math.exp(-abs(a - b)))


def _allowed(prefix: str, char: str, lexicon: Lexicon | None) -> bool:
    """May `prefix` grow by `char` under the lexicon? (a letter continues a word, a space ends one)."""
    if lexicon is None:
        return not (char == " " and (not prefix or prefix.endswith(" ")))  # no leading or double spaces
    word = prefix.rsplit(" ", 1)[-1]
    if char == " ":
        return word in lexicon.words
    return word + char in lexicon.prefixes


def prefix_beam_search(log_probs: np.ndarray, vocab: CharVocab, beam_size: int = 8,
                       lexicon: Lexicon | None = None, prune: float = -12.0) -> list[tuple[str, float]]:
    """The `beam_size` best transcripts of one utterance's frame log-probabilities (T, V), with their log-probability.

    Each beam's score is the total probability of all alignments that collapse to it; symbols below
    `prune` (log-probability) in a frame are not tried. With a lexicon the finished transcripts end
    in a lexicon word (when none does, the unconstrained search answers).

    Example:
        >>> probs = np.array([[0.6, 0.4], [0.6, 0.4]])  # blank, "a": best path "" (0.36), but "a" has 0.64
        >>> [(t, round(math.exp(s), 2)) for t, s in prefix_beam_search(np.log(probs), CharVocab("a "))]
        [('a', 0.64), ('', 0.36)]
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    beams: dict[str, tuple[float, float]] = {"": (0.0, _NEG)}  # prefix -> (log p ending in blank, ending in a char)
    for frame in log_probs:
        nxt: dict[str, list[float]] = defaultdict(lambda: [_NEG, _NEG])
        symbols = [s for s in np.flatnonzero(frame >= prune).tolist()] or [int(frame.argmax())]
        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            for s in symbols:
                p = frame[s]
                if s == BLANK:
                    nxt[prefix][0] = _logadd(nxt[prefix][0], total + p)
                    continue
                char = vocab.alphabet[s - 1]
                if prefix and prefix[-1] == char:  # a repeat merges unless a blank separates it
                    nxt[prefix][1] = _logadd(nxt[prefix][1], pnb + p)
                    if _allowed(prefix, char, lexicon):
                        nxt[prefix + char][1] = _logadd(nxt[prefix + char][1], pb + p)
                elif _allowed(prefix, char, lexicon):
                    nxt[prefix + char][1] = _logadd(nxt[prefix + char][1], total + p)
        live = [kv for kv in nxt.items() if _logadd(*kv[1]) > _NEG]  # a prefix no alignment reaches is no beam
        ranked = sorted(live, key=lambda kv: -_logadd(*kv[1]))[:beam_size]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    done = [(" ".join(k.split()), _logadd(*v)) for k, v in beams.items()]
    if lexicon is not None:
        closed = [(t, s) for t, s in done if not t or t.split()[-1] in lexicon.words]
        if not closed:
            return prefix_beam_search(log_probs, vocab, beam_size, None, prune)
        done = closed
    merged: dict[str, float] = {}
    for text, score in done:  # "a " and "a" are one transcript
        merged[text] = _logadd(merged.get(text, _NEG), score)
    return sorted(merged.items(), key=lambda kv: -kv[1])


def beam_decode(log_probs: np.ndarray, vocab: CharVocab, beam_size: int = 8, lexicon: Lexicon | None = None) -> str:
    """The best transcript of `prefix_beam_search`."""
    return prefix_beam_search(log_probs, vocab, beam_size, lexicon)[0][0]
