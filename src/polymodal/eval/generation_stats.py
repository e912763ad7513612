"""Set-level measures of generated images: Fréchet distance on our own encoder's features, diversity,
nearest training images (copying), and contact sheets.

The features are the mean-pooled regions of a project image encoder (by default the bundled VQA model's
CNN, pretrained on Shapes World scene attributes), so the distance measures what this project's own
perception sees, not Inception's. The Fréchet distance is Heusel et al. 2017, eq. 6, with the matrix
square root taken through an eigendecomposition (no scipy).

Example:
    >>> a, b = torch.randn(200, 4, dtype=torch.float64), torch.randn(200, 4, dtype=torch.float64) + 3
    >>> frechet_distance(a, a) < 1e-6, frechet_distance(a, b) > 30
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError


def to_unit_tensor(images: Sequence[Image.Image], size: int = 64) -> torch.Tensor:
    """PIL images -> float (B, 3, size, size) in [0, 1]."""
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
            for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, C) and b (M, C)."""
    if len(a) < 2 or len(b) < 2:
        raise InputError("the Fréchet distance needs at least two feature vectors per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)  # same trace as sqrt(cov_a cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross.trace())


def pairwise_diversity(groups: Sequence[Sequence[Image.Image]], distinct_at: float = 0.02) -> dict[str, float]:
    """Within each group (images of one prompt), mean absolute pixel difference between every two images.

    Returns the mean over groups of that difference (0-1 scale) and the share of pairs that differ by more
    than `distinct_at` (i.e. visibly different pictures, not copies of one another).

    Example:
        >>> same = [Image.new("RGB", (8, 8), "red")] * 2
        >>> pairwise_diversity([same])["distinct_pairs"]
        0.0
    """
    diffs = []
    for images in groups:
        x = to_unit_tensor(images)
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                diffs.append(float((x[i] - x[j]).abs().mean()))
    if not diffs:
        return {"mean_pixel_difference": 0.0, "distinct_pairs": 0.0}
    return {"mean_pixel_difference": float(np.mean(diffs)), "distinct_pairs": float(np.mean([d > distinct_at for d in diffs]))}


def nearest_distances(queries: Sequence[Image.Image], pool: torch.Tensor, size: int = 64, batch: int = 64) -> torch.Tensor:
    """For each query image, the RMS pixel distance (0-1 scale) to its nearest image in `pool` (N, 3, S, S).

    Example:
        >>> pool = to_unit_tensor([Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")], 8)
        >>> nearest_distances([Image.new("RGB", (8, 8), "red")], pool, size=8).tolist()
        [0.0]
    """
    flat_pool = pool.flatten(1)  # (N, D)
    out = []
    for start in range(0, len(queries), batch):
        q = to_unit_tensor(list(queries[start:start + batch]), size).flatten(1)  # (B, D)
        # the nearest by the fast expansion |q|^2 - 2 q.p + |p|^2, then its distance exactly: the expansion
        # cancels badly in float32 (an image in the pool came out 1e-3 from itself)
        d2 = q.pow(2).sum(1, keepdim=True) - 2 * q @ flat_pool.T + flat_pool.pow(2).sum(1)
        nearest = flat_pool[d2.argmin(1)]
        out.append((q - nearest).pow(2).mean(1).sqrt())
    return torch.cat(out)


def image_grid(images: Sequence[Image.Image], columns: int | None = None, pad: int = 2,
               labels: Sequence[str] | None = None, label_height: int = 12) -> Image.Image:
    """A contact sheet: images in rows of `columns` on a white canvas, each optionally captioned below.

    Example:
        >>> image_grid([Image.new("RGB", (8, 8))] * 3, columns=2, pad=1).size
        (19, 19)
    """
    if not images:
        raise InputError("no images to put on a contact sheet")
    columns = columns or min(len(images), 8)
    w, h = images[0].size
    cell_h = h + (label_height if labels else 0)
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for k, im in enumerate(images):
        x, y = pad + (k % columns) * (w + pad), pad + (k // columns) * (cell_h + pad)
        sheet.paste(im.convert("RGB").resize((w, h)), (x, y))
        if labels:
            draw.text((x + 1, y + h), labels[k][: max(w // 6, 1)], fill="black")
    return sheet
