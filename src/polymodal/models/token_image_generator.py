"""Text -> image, discrete family: a decoder-only LM reads a caption and writes the image's tokens (Parti, Chameleon).

    caption -> [<bos> w1 ... wn <eos>] -> TransformerLM (nn/transformer.py, the prefix LM's GPT-2 stack)
      -> 64 (or 128) image tokens, one per step (the shared `generate`: sampling, top-k / top-p, KV cache)
      -> the image tokenizer's decoder (models/image_tokenizer.py, FSQ codes) -> image

One vocabulary holds the words and, after them, the image codes. The caption's closing <eos> is the
"begin image" token; image token j always sits at position text_max_len + j, so each position embedding
means one cell of the grid whatever the caption's length. Captions are left-padded (masked) so the image
starts at the same column for every row of a batch. Training replaces the caption by the empty one
([<bos> <eos>]) with probability `cond_drop`, so one network gives both the conditional and the
unconditional next-token distribution, and sampling mixes them with classifier-free guidance
(nn/state.py `guided`; Ho & Salimans 2022, for tokens as in Parti / LlamaGen).

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> from polymodal.models.image_tokenizer import ImageTokenizerConfig
    >>> cfg = TokenImageConfig(image=ImageTokenizerConfig(image_size=16, patch=2, channels=(8, 8), levels=(3, 3)),
    ...                        width=32, layers=1, heads=2)
    >>> model = TokenImageGenerator(cfg, WordTokenizer.build(["a red circle", "a blue square"]))
    >>> images = model.generate_images(["a red circle"], n=2, seed=0)  # untrained: noise-like
    >>> len(images), images[0].size, model.cfg.steps  # 16 tokens: a 4 x 4 grid of codes, one per cell
    (2, (16, 16), 16)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.layout import outside_cells
from ..errors import ConfigError, InputError
from ..nn.state import State, StepFn
from ..nn.transformer import TransformerLM
from ..text.tokenizer import Tokenizer
from .caption_prefix import CaptionPrefixedWriter
from .image_generation import ImageGenerator
from .image_tokenizer import ImageTokenizer, ImageTokenizerConfig


@dataclass
class TokenImageConfig:
    image: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    width: int = 256
    layers: int = 6
    heads: int = 8
    dropout: float = 0.0
    text_max_len: int = 32      # caption tokens, <bos> and <eos> included
    cond_drop: float = 0.1      # training: probability that a caption is replaced by the empty one
    guidance: float = 3.0       # default classifier-free guidance scale
    temperature: float = 1.0    # default sampling temperature
    top_k: int = 0              # default: sample among the k likeliest codes; 0 = all
    top_p: float = 1.0          # default nucleus threshold; 1 = off
    layout_grid: int = 0        # > 0: trained with a layout box after the caption, on this grid (data/layout.py)
    # per code slot of a cell, the codes that draw background (data/layout.py background_codes, fitted on the
    # training scenes): the only ones sampled outside a layout box; empty = the box is only asked for
    outside_box_codes: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"token image generator: cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.width % self.heads:
            raise ConfigError(f"token image generator: width {self.width} must divide by heads {self.heads}")

    @property
    def tokens(self) -> int:
        return self.image.tokens

    @property
    def image_size(self) -> int:
        return self.image.image_size

    @property
    def steps(self) -> int:
        """Sampler steps: one per image token, fixed by the tokenizer's grid."""
        return self.tokens


def ruled_out_by_position(step: StepFn, banned: torch.Tensor) -> StepFn:
    """`step` with banned[t] (T, V) ruled out when writing image code t (any state with "made", paired or not)."""
    def masked_step(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        made = state["made"].reshape(len(tokens), -1)[:, 0].clamp(max=len(banned) - 1)
        logits, new, _ = step(tokens, state)
        return logits.masked_fill(banned[made], -math.inf), new, None

    return masked_step


class TokenImageGenerator(CaptionPrefixedWriter, ImageGenerator, nn.Module):
    """Caption -> image tokens -> image; `generate_images` is the user API, `forward` the training loss."""

    architecture, config_cls = "token_image_generator", TokenImageConfig
    fixed_steps = True

    def __init__(self, cfg: TokenImageConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.image_tokenizer = ImageTokenizer(cfg.image, with_encoder=False)  # drawing needs the decoder alone
        self.text_vocab, self.codes = len(tokenizer), self.image_tokenizer.vocab_size
        self.lm = TransformerLM(self.text_vocab + self.codes, cfg.width, cfg.layers, cfg.heads,
                                cfg.text_max_len + cfg.tokens, cfg.dropout)

    # ---- sequences ---------------------------------------------------------------------------
    @property
    def max_caption_tokens(self) -> int:
        return self.cfg.text_max_len

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., D) -> logits over the image codes only (..., K): words never follow <eos> here."""
        return hidden @ self.lm.wte.weight[self.text_vocab:].T

    def written_logits(self, hidden: torch.Tensor, state: State) -> torch.Tensor:
        logits = hidden.new_full((len(hidden), self.text_vocab + self.codes), -math.inf)
        logits[:, self.text_vocab:] = self.code_logits(hidden)
        return logits

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Next-code loss: batch["tokens"] (B, T) right-padded caption ids, batch["codes"] (B, C) image codes."""
        captions, codes = self.train_captions(batch["tokens"]), batch["codes"]
        logits = self.code_logits(self.written_hidden(captions, codes + self.text_vocab))  # (B, C, K)
        loss = F.cross_entropy(logits.reshape(-1, self.codes).float(), codes.reshape(-1))
        return logits, {"loss": loss, "code_loss": loss.detach()}

    # ---- sampling ----------------------------------------------------------------------------
    @torch.inference_mode()
    def sample_codes(self, texts: list[str], n: int, seed: int, guidance: float, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None,
                     layout: Sequence[int] = (), box: Sequence[float] | None = None) -> torch.Tensor:
        """Image tokens (len(texts) * n, T): n samples of each text (after it, the `layout` box's token ids), the
        texts in order. The unconditional row of guidance is the empty caption (no box either), as in training.
        With `box` and fitted `outside_box_codes`, only background codes are written outside the box."""
        captions = self.caption_ids(texts, layout)
        constrain = None
        if box is not None and self.cfg.outside_box_codes:
            constrain = functools.partial(ruled_out_by_position, banned=self.outside_box_ban(box))
        hyps = self.sample_written(captions, n, seed, guidance, self.cfg.tokens, temperature, top_k, top_p,
                                   constrain=constrain)
        codes = [torch.tensor(h.tokens) - self.text_vocab for per_text in hyps for h in per_text]
        return torch.stack(codes).to(self.device)

    @torch.inference_mode()
    def sample_batch(self, texts: list[str], seed: int, guidance: float, temperature: float | None = None) -> torch.Tensor:
        """One image per text, the texts sampled together (a benchmark's batch): (B, 3, S, S) in [-1, 1]."""
        return self.image_tokenizer.decode(self.sample_codes(texts, 1, seed, guidance, temperature))

    def outside_box_ban(self, box: Sequence[float]) -> torch.Tensor:
        """(T, V) True where image code t may not be token v: outside the box every code that is not a background
        code of its slot (a slot without any keeps all codes rather than none). Words `step` rules out itself."""
        grid, slots = self.image_tokenizer.grid, self.cfg.image.codes_per_cell
        banned = torch.zeros(self.cfg.tokens, self.text_vocab + self.codes, dtype=torch.bool)
        outside = [cell for cell, out in enumerate(outside_cells(box, self.cfg.layout_grid, grid)) if out]
        for slot, allowed in enumerate(self.cfg.outside_box_codes):
            if allowed:
                rows = torch.tensor([cell * slots + slot for cell in outside], dtype=torch.long)
                banned[rows, self.text_vocab:] = True
                banned[rows[:, None], torch.tensor(allowed) + self.text_vocab] = False
        return banned.to(self.device)

    def generate_images(self, texts: str | list[str], n: int = 1, seed: int = 0, steps: int | None = None,
                        guidance: float | None = None, progress: bool = False, batch_size: int = 32,
                        box: Sequence[float] | None = None, strict_box: bool = False) -> list[Image.Image]:
        """Draw `n` images per prompt; the same seed and prompt give the same images.

        Args:
            texts: one prompt or a list; the result lists the n images of the first prompt, then the next.
            n: images per prompt (1 to 64).
            seed: sampling seed; a prompt's images depend on it (and batch_size), not on the other prompts.
            steps: must be left out (or equal `cfg.steps`): one step per image token.
            guidance: classifier-free guidance scale (default `cfg.guidance`); 0 ignores the prompt.
            progress: unused (sampling takes well under a second per batch); kept for the shared API.
            batch_size: images sampled together.
            box: draw the prompt inside this box (x0, y0, x1, y1 in [0, 1], y down), for a generator trained
                with layouts (configs/text_to_image_layout.yaml); InputError for any other.
            strict_box: write only background codes outside the box (`outside_box_codes`, fitted by the layout
                training): objects land in the box far more often, but are drawn worse (docs/control.md).

        Example:
            >>> model = polymodal.load("runs/text_to_image_tokens")  # doctest: +SKIP
            >>> model.generate_images("a small red circle to the left of a large blue square", n=4, seed=0)  # doctest: +SKIP
            [<PIL.Image.Image image mode=RGB size=64x64 at ...>, ...]
        """
        texts, steps, guidance = self.prepare_request(texts, n, steps, guidance)
        layout = self.layout_ids(box)
        if strict_box and (box is None or not self.cfg.outside_box_codes):
            raise InputError("strict_box needs a box, and a generator whose layout training fitted its background "
                             "codes (layout.keep_outside); leave it off")
        return self.draw_per_prompt(texts, n, seed, batch_size, lambda text, count, at: self.image_tokenizer.decode(
            self.sample_codes([text], count, at, guidance, layout=layout, box=box if strict_box else None)))
