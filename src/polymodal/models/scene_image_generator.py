"""Text -> image by planning, then drawing: one LM writes a scene plan after the caption, a renderer draws it.

    caption -> [<bos> w1 ... wn <eos>] -> TransformerLM (models/caption_prefix.py) -> scene plan, one token per
      step under the plan grammar (models/plan_grammar.py; the shared `generate`, classifier-free guidance)
      "<bg3> <obj> small red circle <w12> <h12> <x20> <y40> ..." (data/scene_plan.py)
    -> SpriteRenderer (nn/sprites.py): each object's sprite placed in its box, over the background -> image

What to draw and where is decided in tokens the LM reads and writes like words (LayoutGPT, Feng et al. 2023;
LLM-grounded diffusion, Lian et al. 2023); the renderer only turns a plan into pixels, so the image holds what the
plan says, and a layout box ("draw it here") is a constraint on the plan's coordinates, kept exactly. Both parts
train together on scenes whose objects are annotated (Shapes World): next-token loss on the plan, pixel loss on
the image the renderer draws from the true plan.

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> from polymodal.data.scene_plan import plan_tokens
    >>> words = WordTokenizer.build(["a small red circle", "a large blue square"]).words
    >>> cfg = SceneImageConfig(image_size=16, width=32, layers=1, heads=2, grid=8, max_objects=2,
    ...                        renderer=SpriteConfig(dim=16, channels=(16, 8)), background_levels=[40.0])
    >>> model = SceneImageGenerator(cfg, WordTokenizer([*words, *plan_tokens(8, 1)]))
    >>> images = model.generate_images("a red circle", n=2, seed=0)  # untrained: some well-formed plan, drawn
    >>> len(images), images[0].size
    (2, (16, 16))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.scene_plan import MAX_PHRASE, ScenePlan, parse_plan
from ..errors import ConfigError, InputError
from ..nn.sprites import SpriteConfig, SpriteRenderer
from ..nn.state import State
from ..nn.transformer import TransformerLM
from ..text.tokenizer import Tokenizer
from .caption_prefix import CaptionPrefixedWriter
from .image_generation import ImageGenerator
from .plan_grammar import H, PlanGrammar, W, X, Y


@dataclass
class SceneImageConfig:
    image_size: int = 64
    width: int = 192
    layers: int = 4
    heads: int = 6
    dropout: float = 0.0
    text_max_len: int = 32       # caption tokens, <bos> and <eos> included
    grid: int = 64               # the plan's raster (data/scene_plan.py)
    max_objects: int = 4
    max_phrase: int = MAX_PHRASE
    background_levels: list[float] = field(default_factory=lambda: [40.0])  # 0-255 shades (fitted in training)
    renderer: SpriteConfig = field(default_factory=SpriteConfig)
    render_weight: float = 20.0      # pixel loss beside the plan's next-token loss
    foreground_weight: float = 4.0   # pixels inside an object's box count this many times
    cond_drop: float = 0.1       # training: probability that a caption is replaced by the empty one
    candidates: int = 1          # plans sampled per image; the likeliest (the model's own score) are drawn
    guidance: float = 1.0        # default classifier-free guidance scale
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.renderer, dict):
            self.renderer = SpriteConfig(**self.renderer)
        if self.width % self.heads:
            raise ConfigError(f"scene image generator: width {self.width} must divide by heads {self.heads}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"scene image generator: cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.candidates < 1:
            raise ConfigError(f"scene image generator: candidates must be at least 1, got {self.candidates}")

    @property
    def steps(self) -> int:
        """The longest plan, in tokens (the background, each object's <obj> + words + 4 coordinates, <eos>)."""
        return 2 + self.max_objects * (self.max_phrase + 5)


def plan_batch(plans: Sequence[ScenePlan], tokenizer: Tokenizer, grid: int, max_phrase: int,
               device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """What the renderer reads for each plan: phrases (B, K, P) ids, boxes (B, K, 4), present (B, K), backgrounds (B,)."""
    k = max([len(p.objects) for p in plans] + [1])
    phrases = torch.full((len(plans), k, max_phrase), tokenizer.pad_id, dtype=torch.long)
    boxes, present = torch.zeros(len(plans), k, 4), torch.zeros(len(plans), k, dtype=torch.bool)
    for b, plan in enumerate(plans):
        for i, obj in enumerate(plan.objects):
            ids = [tokenizer.index.get(w, tokenizer.unk_id) for w in obj.phrase][:max_phrase]  # type: ignore[attr-defined]
            phrases[b, i, : len(ids)] = torch.tensor(ids)
            boxes[b, i], present[b, i] = torch.tensor(obj.box(grid)), True
    backgrounds = torch.tensor([p.background for p in plans], dtype=torch.long)
    return {name: t.to(device) for name, t in (("phrases", phrases), ("boxes", boxes), ("present", present),
                                                ("backgrounds", backgrounds))}


class SceneImageGenerator(CaptionPrefixedWriter, ImageGenerator, nn.Module):
    """Caption -> scene plan -> image; `generate_images` is the user API, `forward` the training loss."""

    architecture, config_cls = "scene_image_generator", SceneImageConfig
    fixed_steps = True

    def __init__(self, cfg: SceneImageConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.lm = TransformerLM(len(tokenizer), cfg.width, cfg.layers, cfg.heads, cfg.text_max_len + cfg.steps,
                                cfg.dropout)
        self.renderer = SpriteRenderer(cfg.renderer, len(tokenizer), cfg.background_levels, tokenizer.pad_id)
        self.grammar = PlanGrammar(tokenizer, cfg.grid, cfg.max_objects, cfg.max_phrase)
        self._ordinal_init()

    def _ordinal_init(self, scale: float = 0.03) -> None:
        """Start each coordinate token's embedding near its neighbours' (a sinusoid of its value added), so that
        "further right" and "below" are there from the start rather than learnt for 64 unrelated tokens."""
        g, dim = self.cfg.grid, self.cfg.width
        angles = ((torch.arange(g) + 0.5) / g)[:, None] * math.pi * torch.arange(1, dim // 2 + 1)[None]
        ordinal = F.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, dim % 2)) * scale
        kinds, values = self.grammar.kind, self.grammar.value
        with torch.no_grad():
            for kind in (W, H, X, Y):
                ids = (kinds == kind).nonzero().flatten()
                self.lm.wte.weight[ids] += ordinal[values[ids]]

    @property
    def max_caption_tokens(self) -> int:
        return self.cfg.text_max_len

    @property
    def trained_controls(self) -> tuple[str, ...]:
        return ("box",)  # a box is a constraint on the plan, always kept strictly: no separate strict mode to offer

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: "tokens" (B, T) captions, "plan" (B, L) plan ids ending in <eos>, right-padded; "phrases",
        "boxes", "present", "backgrounds" (`plan_batch` of the true plans) and "pixels" (B, 3, S, S) in [-1, 1]."""
        plan = batch["plan"]
        logits = self.lm.logits(self.written_hidden(self.train_captions(batch["tokens"]), plan))
        plan_loss = F.cross_entropy(logits.flatten(0, 1).float(), plan.flatten(), ignore_index=self.tokenizer.pad_id)
        drawn = self.renderer(batch["phrases"], batch["boxes"], batch["present"], batch["backgrounds"],
                              self.cfg.image_size)
        render_loss = (self.pixel_weights(batch) * (drawn - batch["pixels"]) ** 2).mean()
        loss = plan_loss + self.cfg.render_weight * render_loss
        return logits, {"loss": loss, "plan_loss": plan_loss.detach(), "render_loss": render_loss.detach()}

    def pixel_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, S, S): `foreground_weight` inside any object's box, 1 elsewhere (objects are a small part)."""
        s = self.cfg.image_size
        centres = (torch.arange(s, device=batch["boxes"].device) + 0.5) / s
        boxes = batch["boxes"]
        in_x = (centres[None, None] - boxes[..., :1]).abs() <= boxes[..., 2:3] / 2  # (B, K, S)
        in_y = (centres[None, None] - boxes[..., 1:2]).abs() <= boxes[..., 3:4] / 2
        inside = (in_y[..., :, None] & in_x[..., None, :] & batch["present"][..., None, None]).any(1)
        return 1 + (self.cfg.foreground_weight - 1) * inside[:, None].float()

    # ---- sampling ----------------------------------------------------------------------------
    def written_logits(self, hidden: torch.Tensor, state: State) -> torch.Tensor:
        return self.lm.logits(hidden).masked_fill(~self.grammar.allowed(state), -math.inf)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        return super().step(tokens, self.grammar.advance(state, tokens))  # the opening token leaves START as it is

    @torch.inference_mode()
    def sample_plans(self, texts: list[str], n: int, seed: int, guidance: float, temperature: float | None = None,
                     top_k: int | None = None, top_p: float | None = None,
                     box: Sequence[float] | None = None) -> list[ScenePlan]:
        """n plans per text (the texts in order), every object inside `box` (x0, y0, x1, y1; the image without):
        the n likeliest, by the model's own score, of n * `cfg.candidates` sampled (best-of-n sampling)."""
        captions, tok = self.caption_ids(texts), self.tokenizer
        hyps = self.sample_written(captions, n * self.cfg.candidates, seed, guidance, self.cfg.steps, temperature,
                                   top_k, top_p, start=lambda rows: self.grammar.start(rows, box, captions.device))
        return [parse_plan([tok.words[i] for i in h.tokens]) for per_text in hyps for h in per_text[:n]]

    @torch.inference_mode()
    def render(self, plans: Sequence[ScenePlan]) -> torch.Tensor:
        """Plans -> images (B, 3, S, S) in [-1, 1]."""
        batch = plan_batch(plans, self.tokenizer, self.cfg.grid, self.cfg.max_phrase, self.device)
        return self.renderer(**batch, size=self.cfg.image_size)

    def sample_batch(self, texts: list[str], seed: int, guidance: float, temperature: float | None = None) -> torch.Tensor:
        """One image per text, the texts sampled together (a benchmark's batch): (B, 3, S, S) in [-1, 1]."""
        return self.render(self.sample_plans(texts, 1, seed, guidance, temperature))

    def generate_images(self, texts: str | list[str], n: int = 1, seed: int = 0, steps: int | None = None,
                        guidance: float | None = None, progress: bool = False, batch_size: int = 32,
                        box: Sequence[float] | None = None, strict_box: bool = False) -> list[Image.Image]:
        """Draw `n` images per prompt; the same seed and prompt give the same images.

        Args:
            texts: one prompt or a list; the result lists the n images of the first prompt, then the next.
            n: images per prompt (1 to 64).
            seed: sampling seed; a prompt's images depend on it (and batch_size), not on the other prompts.
            steps: must be left out (or equal `cfg.steps`): the plan is written one token per step.
            guidance: classifier-free guidance scale on the plan (default `cfg.guidance`); 0 ignores the prompt.
            progress: unused (a batch of plans takes well under a second); kept for the shared API.
            batch_size: images sampled together.
            box: every object inside this box (x0, y0, x1, y1 in [0, 1], y down); kept exactly.
            strict_box: accepted for the shared API: this generator always keeps its box strictly.

        Example:
            >>> model = polymodal.load("runs/text_to_image_scenes")  # doctest: +SKIP
            >>> model.generate_images("a small red circle to the left of a large blue square", n=4, seed=0)  # doctest: +SKIP
            [<PIL.Image.Image image mode=RGB size=64x64 at ...>, ...]
        """
        texts, steps, guidance = self.prepare_request(texts, n, steps, guidance)
        box = self.check_layout(box)
        if box is None and strict_box:
            raise InputError("strict_box needs a box (x0,y0,x1,y1); leave it off")
        return self.draw_per_prompt(texts, n, seed, batch_size, lambda text, count, at: self.render(
            self.sample_plans([text], count, at, guidance, box=box)))
