"""Text -> image: a conditional U-Net trained by flow matching, sampled with Euler steps and classifier-free guidance.

caption -> the project word tokenizer -> a transformer text tower (nn/text_encoders.py; its token features
before pooling, and their mean) -> cross-attention and FiLM in a small U-Net (nn/unet.py) that predicts the
velocity of a straight path from Gaussian noise (t = 0) to the image (t = 1), i.e. rectified flow
(Liu et al. 2022; Lipman et al. 2022, eq. 23). Training draws t from a logit-normal (Esser et al. 2024,
sec. 3.1) and replaces the caption by a learned "no caption" token with probability `cond_drop`, so one
network gives both the conditional and the unconditional velocity; sampling mixes them,
v = v_uncond + guidance * (v_cond - v_uncond) (Ho & Salimans 2022): guidance 0 ignores the caption, 1 is plain
conditional sampling, above 1 follows the caption more closely.

Example:
    >>> from polymodal.text.tokenizer import WordTokenizer
    >>> cfg = TextToImageConfig(image_size=16, unet=UNetConfig(channels=(8, 16), attention=(False, True), heads=2),
    ...                         text=TextEncoderConfig(width=16, layers=1, heads=2))
    >>> model = TextToImage(cfg, WordTokenizer.build(["a red circle", "a blue square"]))
    >>> images = model.generate_images(["a red circle"], n=2, seed=0, steps=2)  # untrained: noise-like
    >>> len(images), images[0].size
    (2, (16, 16))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError
from ..nn.text_encoders import TextEncoderConfig, TransformerTower
from ..nn.unet import UNet, UNetConfig
from ..text.tokenizer import Tokenizer
from .image_generation import ImageGenerator, to_pil


@dataclass
class TextToImageConfig:
    image_size: int = 64
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(width=128, layers=2, heads=4,
                                                                              dropout=0.0))
    cond_drop: float = 0.1      # training: probability that a caption is replaced by the empty condition
    steps: int = 20             # default Euler steps
    guidance: float = 3.0       # default classifier-free guidance scale

    def __post_init__(self) -> None:
        if self.text.name != "transformer":
            raise ConfigError(f"text_to_image: model.text.name must be 'transformer' (token features for "
                              f"cross-attention), got {self.text.name!r}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise ConfigError(f"text_to_image: cond_drop must be in [0, 1), got {self.cond_drop}")


class TextToImage(ImageGenerator, nn.Module):
    """A text-conditioned image generator; `generate_images` is the user API, `forward` the training loss."""

    architecture, config_cls = "text_to_image", TextToImageConfig

    def __init__(self, cfg: TextToImageConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.text = TransformerTower(cfg.text, tokenizer)
        width = cfg.text.width
        self.null_context = nn.Parameter(torch.randn(1, 1, width) * 0.02)  # the "no caption" token
        self.unet = UNet(cfg.unet, in_channels=3, context_dim=width)

    # ---- text -----------------------------------------------------------------------------------
    @property
    def max_caption_tokens(self) -> int:
        return self.cfg.text.max_len

    def encode_text(self, ids: torch.Tensor, drop: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token features (B, T, D), their mask (B, T) and mean (B, D); rows where `drop` is True get the null token."""
        tower = self.text
        ids = ids[:, : tower.cfg.max_len]
        mask = ids != tower.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = tower.norm(tower.encoder(tower.embed(ids) + tower.position(positions), src_key_padding_mask=~mask))
        if drop is not None and bool(drop.any()):
            null = self.null_context.expand(ids.shape[0], ids.shape[1], -1)
            x = torch.where(drop[:, None, None], null, x)
            only_first = torch.zeros_like(mask)
            only_first[:, 0] = True
            mask = torch.where(drop[:, None], only_first, mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, mask, pooled

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Flow-matching loss: batch["pixels"] (B, 3, S, S) in [-1, 1], batch["tokens"] (B, T) caption ids."""
        x1 = batch["pixels"]
        b = x1.shape[0]
        x0 = torch.randn_like(x1)
        t = torch.sigmoid(torch.randn(b, device=x1.device))  # logit-normal(0, 1): more weight mid-path
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * x1
        drop = torch.rand(b, device=x1.device) < self.cfg.cond_drop if self.training else None
        context, mask, pooled = self.encode_text(batch["tokens"], drop)
        v = self.unet(xt, t, context, mask, pooled)
        loss = F.mse_loss(v, x1 - x0)
        return v, {"loss": loss, "flow_loss": loss.detach()}

    # ---- sampling ---------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: float, cond: tuple, uncond: tuple | None, guidance: float) -> torch.Tensor:
        """The guided velocity at time t for a batch of states x (B, 3, S, S)."""
        tt = torch.full((x.shape[0],), t, device=x.device)
        if uncond is None:  # guidance 1: the conditional velocity alone; guidance 0: the unconditional alone
            return self.unet(x, tt, *cond)
        both = self.unet(torch.cat([x, x]), torch.cat([tt, tt]), *(torch.cat([c, u]) for c, u in zip(cond, uncond,
                                                                                                        strict=True)))
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    @torch.inference_mode()
    def sample(self, texts: list[str], noise: torch.Tensor, steps: int, guidance: float,
               progress: bool = False) -> torch.Tensor:
        """Euler integration of the guided flow from `noise` (B, 3, S, S) at t = 0 to images at t = 1 (one text per row)."""
        ids = self.caption_ids(texts)
        cond = self.encode_text(ids)
        uncond = self.encode_text(ids, torch.ones(len(texts), dtype=torch.bool, device=ids.device))
        if guidance == 0.0:
            cond, uncond = uncond, None
        elif guidance == 1.0:
            uncond = None
        x = noise.to(self.device)
        for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
            x = x + self.velocity(x, i / steps, cond, uncond, guidance) / steps
        return x

    def generate_images(self, texts: str | list[str], n: int = 1, seed: int = 0, steps: int | None = None,
                        guidance: float | None = None, progress: bool = False, batch_size: int = 32,
                        box: Sequence[float] | None = None, strict_box: bool = False) -> list[Image.Image]:
        """Draw `n` images per prompt; the same seed gives the same images.

        Args:
            texts: one prompt or a list; the result lists the n images of the first prompt, then the next.
            n: images per prompt (1 to MAX_IMAGES).
            seed: the starting noise of image j of every prompt comes from this seed alone.
            steps: Euler steps (default `cfg.steps`); fewer is faster, coarser.
            guidance: classifier-free guidance scale (default `cfg.guidance`); 0 ignores the prompt.
            progress: show a tqdm bar over the sampler steps.
            batch_size: images sampled together.
            box: a layout box; this family takes none (InputError: data/layout.py is the discrete family's).
            strict_box: unused here (the discrete family's: nothing drawn outside the box).

        Raises:
            InputError: an empty, too long or wholly unknown prompt, or n, steps or guidance out of range.

        Example:
            >>> model = polymodal.load("runs/text_to_image")  # doctest: +SKIP
            >>> model.generate_images("a small red circle to the left of a large blue square", n=4, seed=0)  # doctest: +SKIP
            [<PIL.Image.Image image mode=RGB size=64x64 at ...>, ...]
        """
        texts, steps, guidance = self.prepare_request(texts, n, steps, guidance)
        self.check_layout(box)  # refuses a box: this family was never trained with layouts
        self.eval()
        size = self.cfg.image_size
        noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # shared by the prompts
        rows = [(text, j) for text in texts for j in range(n)]
        out: list[Image.Image] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            x = self.sample([t for t, _ in chunk], torch.stack([noise[j] for _, j in chunk]), steps, guidance,
                            progress)
            out += to_pil(x)
        return out
