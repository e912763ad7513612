"""A word budget for a captioner trained with the length control: the longest length whose caption fits.

Cutting a caption off at the budget ("a small red circle to the left of") keeps the budget but not the sentence.
A model that knows `<detailed>`, `<normal>` and `<short>` can instead say less: each image gets the longest of
them whose caption fits the budget unconstrained, and only an image whose short caption is still too long is cut
off (decoding with the budget, generate.py). So the budget always holds and the caption ends where the model ends.

Example:
    >>> import polymodal  # doctest: +SKIP
    >>> model = polymodal.load("runs/prefix_lm_controls_focus/model")  # doctest: +SKIP
    >>> model.caption(["a.png"], max_new_words=8)  # doctest: +SKIP
    ['a red circle and a blue square']
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..data.caption_controls import LENGTHS, CaptionControls
from ..generate import GenerationConfig, Hypothesis


def says_less(model: Any, cfg: GenerationConfig, prompt: Any) -> bool:
    """Whether a word budget is met by saying less (`longest_within`) rather than cut off: a budget, no other
    control prompt, and a model trained with the length control."""
    return bool(cfg.max_new_words) and not prompt and "length" in getattr(model, "trained_controls", ())


def longest_within(model: Any, images: torch.Tensor, cfg: GenerationConfig) -> list[list[Hypothesis]]:
    """Per image, the hypotheses of the longest length control whose captions have at most `cfg.max_new_words`
    words (those that fit, best first); images where even `short` does not fit: `short` decoded with the budget."""
    free, words = replace(cfg, max_new_words=0), set(cfg.word_ids)
    out: list[list[Hypothesis] | None] = [None] * len(images)
    for length in reversed(LENGTHS):  # detailed, normal, short
        todo = [i for i, hyps in enumerate(out) if hyps is None]
        if not todo:
            break
        prompt = model.control_prompt(CaptionControls(length=length))
        for i, hyps in zip(todo, model.generate(images[todo], free, prompts=[prompt] * len(todo)), strict=True):
            fits = [h for h in hyps if sum(t in words for t in h.tokens) <= cfg.max_new_words]
            out[i] = fits or None
    todo = [i for i, hyps in enumerate(out) if hyps is None]
    if todo:
        prompt = model.control_prompt(CaptionControls(length="short"))
        for i, hyps in zip(todo, model.generate(images[todo], cfg, prompts=[prompt] * len(todo)), strict=True):
            out[i] = hyps
    return out  # type: ignore[return-value]
