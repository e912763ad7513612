"""Image captioner: an image encoder + a caption decoder, trained with teacher forcing.

Example:
    >>> import polymodal
    >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
    >>> from polymodal.data.shapes import Scene, ShapeObject, render
    >>> model = polymodal.load(bundled_model_dir(ATTENTION_LSTM))  # or a run of yours: "runs/attention_lstm"
    >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
    ...                ShapeObject("square", "blue", "large", 0.7, 0.5)), background=(40, 40, 40))
    >>> model.caption([render(scene, 64)])  # paths, bytes, PIL images or tensors
    ['a small red circle to the left of a large blue square']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ModelConfig
from ..data.caption_controls import GRID, CaptionControls
from ..data.controlled_captions import prompt_ids
from ..data.images import images_to_batch
from ..data.shapes import ATTRIBUTE_GROUPS
from ..errors import InputError
from ..generate import BeamBatch, GenerationConfig, Hypothesis, State, StepFn, generate
from ..nn.decoders import build_decoder
from ..nn.encoders import build_encoder
from ..text.tokenizer import Tokenizer
from .base import SavedModel
from .caption_budget import longest_within, says_less

ImageInput = str | Path | bytes | Image.Image | torch.Tensor


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
    vocabulary counts its words (not commas); a byte-level BPE the pieces that start a word (`Ġ`, `▁`), and lets a
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
    ids = range(4, len(tokenizer)) if words is None else (i for i, w in enumerate(words) if w[:1].isalnum())
    return {"max_new_words": max_new_words, "word_ids": tuple(ids)}


def pop_controls(generation: dict[str, Any]) -> CaptionControls:
    """The trained controls (CaptionControls' fields: length, form, focus_...) taken out of caption keywords.

    Example:
        >>> kwargs = {"beam_size": 3, "length": "short"}
        >>> pop_controls(kwargs).kinds, kwargs
        (('length',), {'beam_size': 3})
    """
    return CaptionControls(**{f.name: generation.pop(f.name) for f in fields(CaptionControls) if f.name in generation})


class Captioner(SavedModel, nn.Module):
    """encoder (B, 3, H, W) -> regions (B, N, C) -> decoder -> caption logits."""

    architecture, config_cls = "captioner", ModelConfig

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoder = build_encoder(cfg.encoder)
        self.decoder = build_decoder(cfg.decoder, self.encoder.out_dim, len(tokenizer))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. batch: images (B, 3, H, W), tokens (B, L) = <bos> words <eos> <pad>..."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits, aux = self.decoder(self.encode(batch), inputs)
        losses = {"caption_loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                  targets.reshape(-1), ignore_index=self.tokenizer.pad_id)}
        losses.update(aux["losses"])
        losses["loss"] = sum(losses.values())
        return logits, losses

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Region features (B, N, C): the batch's cached `image_features` if it has them, else encoded images."""
        return batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Captions for a batch of normalized images; per image, hypotheses best first."""
        return self.generate_from_features(self.encoder(images), cfg)

    @torch.inference_mode()
    def generate_from_features(self, features: torch.Tensor,
                               cfg: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Captions from region features (B, N, C), e.g. a feature cache's; hypotheses best first."""
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        state = self.decoder.init_state(features)
        tok = self.tokenizer
        return generate(self.decoder.step, state, tok.bos_id, tok.eos_id, cfg, suppress_ids=(tok.pad_id,))

    def init_state(self, images: torch.Tensor) -> State:
        """Normalized images (B, 3, S, S) -> the decoder's state before the first token."""
        return self.decoder.init_state(self.encoder(images))

    def beam_batch(self, cfg: GenerationConfig) -> BeamBatch | None:
        """An empty continuous beam search over this model (the server's continuous batching), or None
        when its decoding states cannot join a running batch.

        Example:
            >>> import polymodal
            >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
            >>> from polymodal.data.shapes import Scene, ShapeObject, render
            >>> model = polymodal.load(bundled_model_dir(ATTENTION_LSTM))
            >>> image = render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64)
            >>> beams = model.beam_batch(GenerationConfig(beam_size=3))
            >>> beams.add(model.init_state(model.preprocess([image])), keys=["a.png"])
            >>> while beams:  # more inputs may join between steps with beams.add
            ...     for key, hyps in beams.advance():
            ...         print(key, model.tokenizer.decode(hyps[0].tokens))
            a.png there is a large red circle
        """
        step, join = self._decoding()
        if join is None:
            return None
        tok = self.tokenizer
        return BeamBatch(step, tok.bos_id, tok.eos_id, cfg, join, suppress_ids=self.unsaid_ids)

    def _decoding(self) -> tuple[StepFn, Callable[[State, State], State] | None]:
        return self.decoder.step, self.decoder.join_states

    def preprocess(self, images: list[ImageInput] | ImageInput) -> torch.Tensor:
        """Paths, bytes, PIL images or tensors -> one normalized batch (B, 3, S, S)."""
        return images_to_batch(images, self.cfg.image_size, self.device)

    @property
    def unsaid_ids(self) -> tuple[int, ...]:
        """Tokens never generated: <pad>, and control tokens (`<short>`, ...: prompt inputs only)."""
        words = getattr(self.tokenizer, "words", ())
        return (self.tokenizer.pad_id, *(i for i, w in enumerate(words) if i > 3 and w.startswith("<")))

    @property
    def trained_controls(self) -> tuple[str, ...]:
        """The caption controls this model was trained with (length, form, focus); none for this architecture."""
        return ()

    def control_prompt(self, controls: CaptionControls) -> list[int] | None:
        """The prompt ids of `controls` (None when none is asked); InputError for one the model was not trained with."""
        if not controls.kinds:
            return None
        missing = [k for k in controls.kinds if k not in self.trained_controls]
        if missing:
            raise InputError(f"this model was not trained with the {missing[0]} control; train one with "
                             f"configs/prefix_lm_controls.yaml")
        return prompt_ids(self.tokenizer, controls.prompt(getattr(self, "control_grid", GRID)))

    def caption(self, images: list[ImageInput] | ImageInput, **generation: Any) -> list[str]:
        """Best caption for each image. `generation` keys are GenerationConfig fields (beam_size=5, ...)."""
        return [hyps[0] for hyps in self.caption_nbest(images, **generation)]

    def generation_config(self, banned_words: Sequence[str] = (), force_words: Sequence[str] = (),
                          omit_words: Sequence[str] = (), max_new_words: int | None = None,
                          **generation: Any) -> GenerationConfig:
        """GenerationConfig fields with this model's defaults (its max length) and the word controls and word
        budget of `caption_nbest`."""
        asked = pop_controls(generation)
        if asked.kinds:  # reached only by a subclass without prompts (refine.py): InputError naming the control
            self.control_prompt(asked)
        generation.setdefault("max_len", self.cfg.decoder.max_len)
        generation.update(word_budget(self.tokenizer, max_new_words))
        for name, ids in control_ids(self.tokenizer, banned_words, force_words, omit_words).items():
            generation[name] = (*generation.get(name, ()), *ids)
        return GenerationConfig(**generation)

    def caption_nbest(self, images: list[ImageInput] | ImageInput, banned_words: Sequence[str] = (),
                      force_words: Sequence[str] = (), omit_words: Sequence[str] = (),
                      max_new_words: int | None = None, **generation: Any) -> list[list[str]]:
        """n-best captions per image (`generation`: GenerationConfig fields). `banned_words` are never said,
        `force_words` always are (constrained beam search), `omit_words` are left out of what the model says
        ("a red circle" -> "a circle"); each may name a group: colours, shapes, sizes, positions. A caption
        ends within `max_new_words` words. A model trained with controls (`trained_controls`) also takes
        `length` ("short" | "normal" | "detailed"), `form` ("list" | "sentence") and a focus: `focus_point=(x, y)`,
        `focus_box=(x0, y0, x1, y1)` (in [0, 1], y down) or `focus_phrase="the red one"` (docs/control.md).

        Example:
            >>> import polymodal
            >>> from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir
            >>> from polymodal.data.shapes import Scene, ShapeObject, render
            >>> model = polymodal.load(bundled_model_dir(BUNDLED_CAPTIONER))
            >>> image = render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64)
            >>> caption = model.caption_nbest([image], banned_words=["colours"], force_words=["circle"])[0][0]
            >>> "circle" in caption.split() and "red" not in caption.split()
            True
            >>> model.caption_nbest([image], omit_words=["colours"])[0][0]
            'a large circle'
        """
        self.eval()
        prompt = self.control_prompt(pop_controls(generation))
        cfg = self.generation_config(banned_words, force_words, omit_words, max_new_words, **generation)
        batch = self.preprocess(images)
        if says_less(self, cfg, prompt):
            hyps = longest_within(self, batch, cfg)
        else:
            hyps = self.generate(batch, cfg, **({"prompts": [prompt] * len(batch)} if prompt else {}))
        return [[self.tokenizer.decode(h.tokens) for h in per_image] for per_image in hyps]
