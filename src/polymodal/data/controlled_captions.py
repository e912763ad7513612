"""Caption pairs with a control prompt sampled per example (trained caption controls, caption_controls.py).

Each item is the prefix LM's training sequence `[control tokens] <bos> words <eos>` with `targets` that take
no loss on the prompt, so the LM learns to caption as the prompt asks, and (with chance p_none) to caption
plainly as before.

Example:
    >>> import random
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> tok = with_control_tokens(WordTokenizer.build(["a red circle"]))
    >>> prompt_ids(tok, ["<short>"]) == [tok.index["<short>"]]
    True
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from ..text.tokenizer import Tokenizer, WordTokenizer
from .caption_controls import GRID, LengthBins, control_tokens, sample_control
from .datasets import CaptionDataset
from .shapes import Scene


def with_control_tokens(tokenizer: Tokenizer, grid: int = GRID) -> WordTokenizer:
    """The word tokenizer with the control tokens appended (existing ids unchanged, so weights carry over)."""
    return with_tokens(tokenizer, control_tokens(grid), "trained caption controls")


def with_tokens(tokenizer: Tokenizer, tokens: Sequence[str], what: str) -> WordTokenizer:
    """The word tokenizer with `tokens` it lacks appended (existing ids unchanged, so weights carry over); `what`
    needs them (ConfigError for another kind of tokenizer)."""
    if not isinstance(tokenizer, WordTokenizer):
        raise ConfigError(f"{what} need a word tokenizer (model.tokenizer: word), not {type(tokenizer).__name__}")
    return WordTokenizer([*tokenizer.words, *(t for t in tokens if t not in tokenizer.index)])


def prompt_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
    """Token ids of a control prompt: control tokens by vocabulary lookup (text never encodes to them), phrase
    words by the tokenizer; InputError for a word the model does not know."""
    index = getattr(tokenizer, "index", {})
    out: list[int] = []
    for word in words:
        ids = [index[word]] if word in index else tokenizer.encode(word)
        if not ids or tokenizer.unk_id in ids:
            raise InputError(f"the model does not know the control word {word!r}")
        out += ids
    return out


def read_scenes(folder: str | Path) -> dict[str, Scene]:
    """Record id -> scene, from a Shapes World folder's scenes.jsonl (ids as its captions.json's image ids)."""
    scenes = {}
    with open(Path(folder) / "scenes.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            scenes[str(row["image_id"])] = Scene.from_dict(row)
    return scenes


class ControlledCaptionDataset(Dataset):
    """A CaptionDataset whose items carry a sampled control prompt (`tokens` = prompt + <bos> caption <eos>,
    `targets` = the next tokens, <pad> over the prompt). `scenes` (record id -> Scene) enables the Shapes World
    targets; without them only the length control trains, on the references' length terciles."""

    def __init__(self, base: CaptionDataset, kinds: Sequence[str], p_none: float = 0.5,
                 scenes: dict[str, Scene] | None = None, seed: int = 0, grid: int = GRID,
                 weights: Sequence[float] | None = None, phrase_share: float = 0.4):
        self.base, self.kinds, self.p_none, self.scenes, self.grid = base, tuple(kinds), p_none, scenes, grid
        self.weights = list(weights) if weights is not None else None  # per kind; None: uniform
        self.phrase_share = phrase_share
        self.records, self.tokenizer = base.records, base.tokenizer
        self.bins = None if scenes else LengthBins.fit([c for r in base.records for c in r.captions])
        self.rng = random.Random(f"controls/{seed}")  # one stream: the same seed gives the same examples

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict | None:
        i, j = self.base.pairs[index]
        image = self.base.store[i]
        if image is None:
            return None
        record, tok = self.records[i], self.tokenizer
        scene = self.scenes.get(record.id) if self.scenes else None
        words, caption = sample_control(record.captions[j], scene, self.rng, self.kinds, self.p_none, self.bins,
                                        self.grid, self.weights, self.phrase_share)
        prompt = prompt_ids(tok, words)
        text = [tok.bos_id, *tok.encode(caption, max_len=self.base.max_len), tok.eos_id]
        targets = [tok.pad_id] * len(prompt) + text[1:]  # no loss on the prompt
        return {"image": image, "tokens": torch.tensor(prompt + text), "targets": torch.tensor(targets),
                "record": i}

    def model_inputs(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.base.model_inputs(indices)
