"""Speech recognition metrics (word and character error rate, via jiwer) and the pocketsphinx baseline.

Both sides are normalised the same way before scoring (`normalize_transcript`): lowercase, punctuation
dropped, whitespace collapsed, and American spellings the recognizer's dictionary prefers mapped to
Shapes World's ("color" -> "colour"), so only recognition mistakes count.

`pocketsphinx_transcribe` runs CMU PocketSphinx fully offline with its bundled US-English acoustic
model and dictionary; the language model is its bundled general-English one, or an ARPA file such
as `write_bigram_lm` makes from training transcripts.

Example:
    >>> word_error_rate(["what colour is the circle"], ["what color is a circle?"])
    0.2
    >>> round(character_error_rate(["a red circle"], ["a rod circle"]), 3)
    0.083
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from ..text.answers import plain_words

SPELLINGS = {"color": "colour", "colors": "colours", "gray": "grey", "center": "centre"}


def normalize_transcript(text: str) -> str:
    """Lowercase, punctuation removed, single spaces, British spellings.

    Example:
        >>> normalize_transcript("What  COLOR is the circle?")
        'what colour is the circle'
    """
    return " ".join(SPELLINGS.get(w, w) for w in plain_words(text))


def _pairs(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(hypotheses) != len(references):
        raise InputError(f"error rate: {len(hypotheses)} hypotheses but {len(references)} references; "
                         "pass one hypothesis per reference")
    refs = [normalize_transcript(r) for r in references]
    if not refs or not all(refs):
        raise InputError("error rate: every reference must hold at least one word (and there must be one)")
    return [normalize_transcript(h) for h in hypotheses], refs


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus WER: (substitutions + deletions + insertions) / reference words, over all pairs.

    Example:
        >>> word_error_rate(["a red square", ""], ["a red circle", "what shape"])
        0.6
    """
    import jiwer

    hyps, refs = _pairs(hypotheses, references)
    return float(jiwer.wer(refs, hyps))


def character_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CER: character edits / reference characters (spaces count), over all pairs."""
    import jiwer

    hyps, refs = _pairs(hypotheses, references)
    return float(jiwer.cer(refs, hyps))


# ----------------------------------------------------------------------------- the pocketsphinx baseline
def write_bigram_lm(texts: Iterable[str], path: str | os.PathLike, discount: float = 0.5) -> Path:
    """Write an ARPA bigram language model of `texts` (absolute discounting, backoff to unigrams).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> lm = write_bigram_lm(["a red circle", "a blue square"], f"{tmp.name}/shapes.lm")
        >>> lm.read_text().splitlines()[2:4]
        ['ngram 1=7', 'ngram 2=7']
        >>> tmp.cleanup()
    """
    sentences = [["<s>", *normalize_transcript(t).split(), "</s>"] for t in texts]
    if not any(len(s) > 2 for s in sentences):
        raise InputError("write_bigram_lm: no words in the texts")
    uni = Counter(w for s in sentences for w in s[1:])  # <s> is never predicted
    bi = Counter((a, b) for s in sentences for a, b in zip(s, s[1:], strict=False))
    total, history = sum(uni.values()), Counter(a for a, _ in bi.elements())
    p_uni = {w: c / total for w, c in uni.items()}
    followers: dict[str, list[str]] = {}
    for a, b in bi:
        followers.setdefault(a, []).append(b)
    backoff = {}
    for a, seen in followers.items():
        left = discount * len(seen) / history[a]  # probability mass freed by discounting
        backoff[a] = left / max(1.0 - sum(p_uni[b] for b in seen), 1e-9)
    lines = ["", "\\data\\", f"ngram 1={len(uni) + 1}", f"ngram 2={len(bi)}", "", "\\1-grams:",
             f"-99.0000 <s> {math.log10(backoff['<s>']):.4f}"]
    for w in sorted(uni):
        lines.append(f"{math.log10(p_uni[w]):.4f} {w}" + (f" {math.log10(backoff[w]):.4f}" if w in backoff else ""))
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10((c - discount) / history[a]):.4f} {a} {b}" for (a, b), c in sorted(bi.items())]
    lines += ["", "\\end\\", ""]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@functools.lru_cache(maxsize=4)
def _decoder(lm: str | None):
    try:
        from pocketsphinx import Decoder
    except ImportError:
        raise InputError("pocketsphinx is not installed; `pip install pocketsphinx` (it runs offline with its "
                         "own US-English model)") from None
    options = {"samprate": 16000, "logfn": os.devnull}
    if lm is not None:
        options["lm"] = lm
    return Decoder(**options)


def pocketsphinx_transcribe(wav_path: str | os.PathLike, lm: str | os.PathLike | None = None) -> str:
    """What PocketSphinx hears in an audio file (read at 16 kHz mono), lowercase; "" when it hears nothing.

    Args:
        wav_path: any audio file PyAV decodes.
        lm: an ARPA language model (e.g. from `write_bigram_lm`); default the bundled general-English one.

    Raises:
        InputError: pocketsphinx is not installed.
        DataError: the audio file is missing or cannot be decoded, or `lm` is missing.

    Example:
        >>> pocketsphinx_transcribe("question.wav")  # doctest: +SKIP
        'what colour is the circle'
    """
    from ..data.audio import load_audio

    if lm is not None and not Path(lm).is_file():
        raise DataError(f"{lm}: language model file not found; write one with write_bigram_lm or leave lm out")
    decoder = _decoder(None if lm is None else str(lm))
    wave = load_audio(wav_path, 16000).numpy()
    pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.lower() if hyp is not None else ""
