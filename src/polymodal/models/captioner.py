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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import ModelConfig, from_dict
from ..data.caption_controls import GRID, CaptionControls, with_phrase_words
from ..data.controlled_captions import prompt_ids
from ..data.images import images_to_batch
from ..errors import ConfigError, InputError
from ..generate import BeamBatch, GenerationConfig, Hypothesis, State, StepFn, generate
from ..nn.decoders import build_decoder
from ..nn.encoders import build_encoder
from ..nn.focus import cell_lookup, mark_focus
from ..text.tokenizer import Tokenizer
from .base import SavedModel
from .caption_budget import longest_within, says_less
from .word_controls import control_ids, pop_controls, word_budget

ImageInput = str | Path | bytes | Image.Image | torch.Tensor


@dataclass
class CaptionerControls:
    """The trained caption controls of an encoder-decoder captioner (config.json "controls"; train/controls.py)."""

    kinds: list[str] = field(default_factory=list)  # length, form, focus: what `caption(...)` may ask
    grid: int = GRID                                # focus points are read on a grid of this many cells a side
    marker: bool = False                            # a learnt vector marks the region under a focus point


class Captioner(SavedModel, nn.Module):
    """encoder (B, 3, H, W) -> regions (B, N, C) -> decoder -> caption logits.

    Trained with controls (`enable_controls`), a control prompt (`<short>`, `<focus> <x2> <y5>`) is read by the
    decoder before <bos>, as teacher-forced tokens in training and stepped through at inference, so every decoder
    takes them (the prefix LM puts them in its prefix instead)."""

    architecture, config_cls = "captioner", ModelConfig

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoder = build_encoder(cfg.encoder)
        self.decoder = build_decoder(cfg.decoder, self.encoder.out_dim, len(tokenizer))
        self.controls = CaptionerControls()

    def enable_controls(self, controls: CaptionerControls) -> None:
        """Take control prompts of these kinds (the vocabulary must hold the control tokens); with `marker`, a
        region marker that starts at zero, so a captioner that goes on training with it starts where it was."""
        self.controls = controls
        if controls.marker and not hasattr(self, "focus_marker"):
            self.focus_marker = nn.Parameter(torch.zeros(self.encoder.out_dim, device=self.device))
            self.register_buffer("_cell_of_token", cell_lookup(self.tokenizer, controls.grid).to(self.device),
                                 persistent=False)

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), **({"controls": asdict(self.controls)} if self.controls.kinds else {})}

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer: Tokenizer | None, source: str = "config.json") -> Any:
        model = super().from_config(config, tokenizer, source)
        if config.get("controls"):
            model.enable_controls(from_dict(CaptionerControls, config["controls"], f"{source}:controls"))
        return model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher forcing. batch: images (B, 3, H, W), tokens (B, L) = [prompt] <bos> words <eos> <pad>...;
        an optional "targets" (B, L - 1) replaces the next tokens, <pad> where no loss is taken (the prompt)."""
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], batch.get("targets", tokens[:, 1:])
        logits, aux = self.decoder(self._marked(self.encode(batch), inputs), inputs)
        losses = {"caption_loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                  targets.reshape(-1), ignore_index=self.tokenizer.pad_id)}
        losses.update(aux["losses"])
        losses["loss"] = sum(losses.values())
        return logits, losses

    def _marked(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Regions (B, N, C) with the one under a focus prompt's point marked (when trained with the marker)."""
        if not self.controls.marker or not tokens.shape[1]:
            return features
        return mark_focus(features, tokens, self._cell_of_token, self.controls.grid, self.focus_marker)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Region features (B, N, C): the batch's cached `image_features` if it has them, else encoded images."""
        return batch["image_features"] if "image_features" in batch else self.encoder(batch["images"])

    @torch.inference_mode()
    def generate(self, images: torch.Tensor, cfg: GenerationConfig | None = None,
                 prompts: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        """Captions for a batch of normalized images (one control prompt per image, optional); per image,
        hypotheses best first."""
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        tok = self.tokenizer
        return generate(self.decoder.step, self.init_state(images, prompts), tok.bos_id, tok.eos_id, cfg,
                        suppress_ids=self.unsaid_ids)

    @torch.inference_mode()
    def generate_from_features(self, features: torch.Tensor,
                               cfg: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Captions from region features (B, N, C), e.g. a feature cache's; hypotheses best first."""
        cfg = cfg or GenerationConfig(max_len=self.cfg.decoder.max_len)
        state = self.decoder.init_state(features)
        tok = self.tokenizer
        return generate(self.decoder.step, state, tok.bos_id, tok.eos_id, cfg, suppress_ids=self.unsaid_ids)

    def init_state(self, images: torch.Tensor, prompts: list[list[int]] | None = None) -> State:
        """Normalized images (B, 3, S, S) -> the decoder's state before <bos>: after the control prompts, if
        given (one per image, all of one length: the server and `caption` give a batch one prompt)."""
        features = self.encoder(images)
        if not prompts or not any(prompts):
            return self.decoder.init_state(features)
        if len(prompts) != len(images) or len({len(p) for p in prompts}) > 1:
            raise ConfigError(f"{len(prompts)} prompts for {len(images)} images: give one per image, all of one "
                              f"length")
        ids = torch.tensor(prompts, dtype=torch.long, device=features.device)
        state = self.decoder.init_state(self._marked(features, ids))
        for t in range(ids.shape[1]):  # the prompt is read as in training, token by token (no loss, no output)
            _, state, _ = self.decoder.step(ids[:, t], state)
        return state

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
    def caption_max_len(self) -> int:
        """The most tokens a caption is generated with (<eos> included)."""
        return self.cfg.decoder.max_len

    def caption_context(self) -> list[int]:
        """The ids a caption follows when it is teacher-forced (SCST scores its samples after them): <bos>."""
        return [self.tokenizer.bos_id]

    @property
    def unsaid_ids(self) -> tuple[int, ...]:
        """Tokens never generated: <pad>, and control tokens (`<short>`, ...: prompt inputs only)."""
        words = getattr(self.tokenizer, "words", ())
        return (self.tokenizer.pad_id, *(i for i, w in enumerate(words) if i > 3 and w.startswith("<")))

    @property
    def trained_controls(self) -> tuple[str, ...]:
        """The caption controls this model was trained with (length, form, focus)."""
        return tuple(self.controls.kinds)

    @property
    def control_grid(self) -> int:
        return self.controls.grid

    def control_prompt(self, controls: CaptionControls) -> list[int] | None:
        """The prompt ids of `controls` (None when none is asked); InputError for one the model was not trained with."""
        if not controls.kinds:
            return None
        missing = [k for k in controls.kinds if k not in self.trained_controls]
        if missing:
            raise InputError(f"this model was not trained with the {missing[0]} control; train one with "
                             f"configs/prefix_lm_controls.yaml (or configs/transformer_controls.yaml)")
        return prompt_ids(self.tokenizer, controls.prompt(self.control_grid))

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
        controls = pop_controls(generation)
        prompt = self.control_prompt(controls)
        force_words = with_phrase_words(force_words, controls.focus_phrase, generation.get("strategy", "beam"),
                                        generation.get("beam_size", 3))
        cfg = self.generation_config(banned_words, force_words, omit_words, max_new_words, **generation)
        batch = self.preprocess(images)
        if says_less(self, cfg, prompt):
            hyps = longest_within(self, batch, cfg)
        else:
            hyps = self.generate(batch, cfg, **({"prompts": [prompt] * len(batch)} if prompt else {}))
        return [[self.tokenizer.decode(h.tokens) for h in per_image] for per_image in hyps]
