"""What every text -> image generator shares: the prompt checks, unknown words and turning tensors into PNGs.

Three families implement it: SceneImageGenerator (planning: a scene plan written by a decoder-only LM, then drawn;
models/scene_image_generator.py, the default), TokenImageGenerator (discrete: image tokens written by a
decoder-only LM, models/token_image_generator.py) and TextToImage (continuous: a U-Net trained by flow matching,
models/text_to_image.py). All answer `generate_images(texts, n=..., seed=..., steps=..., guidance=...)`, so the
CLI, the server and the benchmarks take any of them.

Example:
    >>> to_pil(torch.zeros(1, 3, 4, 4))[0].getpixel((0, 0))  # 0 is mid-gray in [-1, 1]
    (128, 128, 128)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from ..data.layout import box_words, check_box
from ..errors import InputError
from ..text.tokenizer import Tokenizer, split_words
from .base import SavedModel

MAX_PROMPT_CHARS = 500   # longer prompts are refused: captions here are a few words
MAX_IMAGES = 64          # images per prompt in one call
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images in [-1, 1], (B, 3, S, S) -> RGB PIL images."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


class ImageGenerator(SavedModel):
    """Mixin: prompt validation and vocabulary help for a model with `tokenizer` and `cfg.steps`/`cfg.guidance`."""

    tokenizer: Tokenizer
    fixed_steps: bool = False  # True where the number of sampler steps is the model's own (one per image token)
    max_caption_tokens: int    # the longest caption the text side reads, <bos> and <eos> included

    def caption_ids(self, texts: list[str], suffix: Sequence[int] = ()) -> torch.Tensor:
        """<bos> words [suffix] <eos>, right-padded (B, T): the form training reads from its caption tokens; the
        suffix (a layout box's tokens) is kept whole, the words cut to fit."""
        tok = self.tokenizer
        room = self.max_caption_tokens - 2 - len(suffix)
        rows = [torch.tensor([tok.bos_id, *tok.encode(t, max_len=room), *suffix, tok.eos_id]) for t in texts]
        return pad_sequence(rows, batch_first=True, padding_value=tok.pad_id).to(self.device)

    @property
    def trained_controls(self) -> tuple[str, ...]:
        """("box",) for a generator trained with a layout box, and "strict_box" where its background codes were
        fitted, else (); the server lists them, the page offers them."""
        if not getattr(self.cfg, "layout_grid", 0):
            return ()
        return ("box", "strict_box") if getattr(self.cfg, "outside_box_codes", None) else ("box",)

    def check_layout(self, box: Sequence[float] | None) -> tuple[float, float, float, float] | None:
        """The layout box as floats (None without one); InputError (one line) for a bad box, or a box given to a
        generator that takes none."""
        if box is None:
            return None
        if "box" not in self.trained_controls:
            raise InputError("this generator was not trained with a layout box; use the planning one "
                             "(configs/text_to_image.yaml) or train configs/text_to_image_layout.yaml, or say where "
                             "in words (\"on the left\")")
        return check_box(box)

    def layout_ids(self, box: Sequence[float] | None) -> list[int]:
        """The token ids of a layout box ("draw it here", data/layout.py) for a discrete generator trained with
        layouts; [] without one; InputError as `check_layout`."""
        if self.check_layout(box) is None:
            return []
        index = getattr(self.tokenizer, "index", {})
        return [index[w] for w in box_words(box, self.cfg.layout_grid)]  # type: ignore[attr-defined]

    def draw_per_prompt(self, texts: list[str], n: int, seed: int, batch_size: int,
                        draw: Callable[[str, int, int], torch.Tensor]) -> list[Image.Image]:
        """Each prompt's n images, `draw(text, count, seed)` -> (count, 3, S, S) in [-1, 1] batch by batch (the
        batch seeded by `seed` + its first index): a prompt's images depend on it and the seed (and batch_size),
        never on the other prompts."""
        self.eval()  # type: ignore[attr-defined]
        out: list[Image.Image] = []
        for text in texts:
            for start in range(0, n, batch_size):
                with torch.inference_mode():
                    out += to_pil(draw(text, min(batch_size, n - start), seed + start))
        return out

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` that are not in the vocabulary (the model reads them as <unk>)."""
        unk = self.tokenizer.unk_id
        return [w for w in split_words(text) if self.tokenizer.encode(w) == [unk]]

    def known_examples(self, k: int = 6) -> list[str]:
        """A few words of the vocabulary, for error messages."""
        vocab = [self.tokenizer.decode([i]) for i in range(4, min(len(self.tokenizer), 4 + 40))]
        return [w for w in vocab if w.isalpha() and len(w) > 2][:k]

    def prepare_request(self, texts: str | list[str], n: int, steps: int | None,
                        guidance: float | None) -> tuple[list[str], int, float]:
        """`generate_images`' arguments with the model's defaults filled in, checked (InputError)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        steps = self.cfg.steps if steps is None else int(steps)
        guidance = self.cfg.guidance if guidance is None else float(guidance)
        self.check_request(texts, n, steps, guidance)
        return texts, steps, guidance

    def check_request(self, texts: list[str], n: int, steps: int, guidance: float) -> None:
        """Refuse what cannot be drawn, with one line that says what to change (InputError)."""
        if not texts:
            raise InputError("no prompt given; pass at least one prompt")
        for text in texts:
            if not text.strip():
                raise InputError("empty prompt; describe the image, e.g. \"a small red circle\"")
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(f"prompt of {len(text)} characters; the most is {MAX_PROMPT_CHARS}")
            words = split_words(text)
            if not words or len(self.unknown_words(text)) == len(words):
                raise InputError(f"prompt {text[:60]!r} has no word this model knows; it knows words such as "
                                 f"{', '.join(self.known_examples())}")
        if not 1 <= n <= MAX_IMAGES:
            raise InputError(f"n={n}: ask for 1 to {MAX_IMAGES} images per prompt")
        if self.fixed_steps and steps != self.cfg.steps:
            raise InputError(f"steps={steps}: this generator writes its {self.cfg.steps} tokens one per step; "
                             f"leave steps out")
        if not 1 <= steps <= MAX_STEPS:
            raise InputError(f"steps={steps}: use 1 to {MAX_STEPS} sampler steps")
        if not 0.0 <= guidance <= MAX_GUIDANCE or guidance != guidance:
            raise InputError(f"guidance={guidance}: use a guidance scale from 0 (ignore the prompt) to {MAX_GUIDANCE}")
