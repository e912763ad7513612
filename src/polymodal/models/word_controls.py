"""Word controls of a caption: must mention, must not mention, leave out (GenerationConfig's force_ids,
banned_ids, omit_ids), a word budget, and the trained controls taken out of caption keywords; the words of the
user's request turned into token ids once, for the Python API, the CLI and the server (docs/control.md).

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tok = WordTokenizer.build(["a red circle", "a blue square"])
    >>> sorted(control_ids(tok, banned_words=["colours"])["banned_ids"]) == sorted(tok.encode("red blue"))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..data.caption_controls import CaptionControls
from ..data.shapes import ATTRIBUTE_GROUPS
from ..errors import InputError


def _pieces(tokenizer: Any, word: str) -> tuple[int, ...]:
    """The tokens `word` is said with inside a caption (after "a ", so that a BPE tokenizer gives its
    in-sentence pieces); InputError for an empty word or one the vocabulary does not hold."""
    word = word.strip().lower()
    if not word:
        raise InputError("an empty word: give words separated by commas, e.g. red,circle")
    context = tokenizer.encode("a")
    pieces = tokenizer.encode(f"a {word}")
    pieces = pieces[len(context):] if pieces[:len(context)] == context else tokenizer.encode(word)
    if not pieces or getattr(tokenizer, "unk_id", None) in pieces:
        raise InputError(f"the model does not know the word {word!r}; use words of its vocabulary or a group "
                         f"({', '.join(ATTRIBUTE_GROUPS)})")
    return tuple(pieces)


def _group(tokenizer: Any, name: str) -> list[str]:
    """The words of attribute group `name` (colours, shapes, sizes, positions) that the model knows."""
    known = []
    for word in ATTRIBUTE_GROUPS[name]:
        try:
            _pieces(tokenizer, word)
        except InputError:  # a word this model never learnt: it cannot say it anyway
            continue
        known.append(word)
    if not known:
        raise InputError(f"the model knows no word of the group {name!r} ({', '.join(ATTRIBUTE_GROUPS[name])})")
    return known


def _words(tokenizer: Any, word: str) -> list[str]:
    """The words a user's `word` stands for: a group name (colours, ...) -> its words the model knows, else itself."""
    name = word.strip().lower()
    return _group(tokenizer, name) if name in ATTRIBUTE_GROUPS else [word]


def banned_token_ids(tokenizer: Any, words: Sequence[str]) -> tuple[int, ...]:
    """The token ids that must never be generated so that none of `words` is said; a group name
    (colours, shapes, sizes, positions) stands for all its words the model knows. InputError for a word the
    model does not know, or one the tokenizer splits into several tokens (it cannot be banned token by token).

    Example:
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tok = WordTokenizer.build(["a red circle", "a blue square"])
        >>> banned_token_ids(tok, ["colours"]) == tuple(tok.encode("red blue"))
        True
    """
    ids = []
    for word in words:
        for said in _words(tokenizer, word):
            pieces = _pieces(tokenizer, said)
            if len(pieces) > 1:
                raise InputError(f"cannot ban {said!r}: this tokenizer splits it into {len(pieces)} tokens; ban "
                                 f"single words of the model's vocabulary")
            ids.append(pieces[0])
    return tuple(ids)


def forced_token_ids(tokenizer: Any, words: Sequence[str]) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """GenerationConfig.force_ids for `words`, each of which must be said; a group name (colours, ...) must
    be said through any one of its words. InputError for a word the model does not know.

    Example:
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tok = WordTokenizer.build(["a red circle", "a blue square"])
        >>> red, blue, circle = tok.encode("red blue circle")
        >>> forced_token_ids(tok, ["circle", "colours"]) == (((circle,),), ((red,), (blue,)))
        True
    """
    out = []
    for word in words:
        out.append(tuple(dict.fromkeys(_pieces(tokenizer, w) for w in _words(tokenizer, word))))
    return tuple(out)


def control_ids(tokenizer: Any, banned_words: Sequence[str] = (), force_words: Sequence[str] = (),
                omit_words: Sequence[str] = ()) -> dict[str, tuple]:
    """GenerationConfig fields for a user's "must not mention" (`banned_words`: never generated), "must mention"
    (`force_words`) and "leave out" (`omit_words`: the model may say them, the caption leaves them out) words;
    InputError for bad words, or a word both forced and banned or omitted.

    Example:
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> tok = WordTokenizer.build(["a red circle", "a blue square"])
        >>> control_ids(tok, banned_words=["red"], force_words=["red"])
        Traceback (most recent call last):
        ...
        polymodal.errors.InputError: 'red' is both forced and banned: a caption cannot say it and not say it
    """
    banned, omitted = banned_token_ids(tokenizer, banned_words), banned_token_ids(tokenizer, omit_words)
    forced = forced_token_ids(tokenizer, force_words)
    for word, alternatives in zip(force_words, forced, strict=True):
        if all(set(alt) & {*banned, *omitted} for alt in alternatives):
            how = "banned" if all(set(alt) & set(banned) for alt in alternatives) else "omitted"
            raise InputError(f"{word.strip()!r} is both forced and {how}: a caption cannot say it and not say it")
    out = {"banned_ids": banned}
    return out | ({"force_ids": forced} if forced else {}) | ({"omit_ids": omitted} if omitted else {})


def word_budget(tokenizer: Any, max_new_words: int | None) -> dict[str, Any]:
    """GenerationConfig fields for a word budget (None: no budget); InputError for a budget below 1. A word
    vocabulary counts its words (not commas; <unk> counts); a byte-level BPE the pieces that start a word (`Ġ`, `▁`), and lets a
    word's later pieces finish it; any other tokenizer counts every token.

    Example:
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> word_budget(WordTokenizer.build(["a red circle, a square"]), 3)["max_new_words"]
        3
    """
    if max_new_words is None:
        return {}
    if isinstance(max_new_words, bool) or not isinstance(max_new_words, int) or max_new_words < 1:
        raise InputError(f"max_new_words must be a whole number of at least 1, got {max_new_words!r}")
    if tokenizer is None:
        raise InputError("max_new_words: this model has no tokenizer to count words with")
    words = getattr(tokenizer, "words", None)
    if words is None and hasattr(tokenizer, "hf"):
        pieces = {i: tokenizer.hf.id_to_token(i) or "" for i in range(4, len(tokenizer))}
        starts = {i for i, p in pieces.items() if p.startswith(("Ġ", "▁"))}
        later = tuple(i for i, p in pieces.items() if i not in starts and any(c.isalnum() for c in p))
        return {"max_new_words": max_new_words, "word_ids": tuple(sorted(starts)), "continuation_ids": later}
    # a word vocabulary's <unk> stands for a word it lacks: it is said as one, so it spends the budget as one
    ids = range(4, len(tokenizer)) if words is None else (i for i, w in enumerate(words)
                                                          if w[:1].isalnum() or i == tokenizer.unk_id)
    return {"max_new_words": max_new_words, "word_ids": tuple(ids)}


def pop_controls(generation: dict[str, Any]) -> CaptionControls:
    """The trained controls (CaptionControls' fields: length, form, focus_...) taken out of caption keywords.

    Example:
        >>> kwargs = {"beam_size": 3, "length": "short"}
        >>> pop_controls(kwargs).kinds, kwargs
        (('length',), {'beam_size': 3})
    """
    return CaptionControls(**{f.name: generation.pop(f.name) for f in fields(CaptionControls) if f.name in generation})
