"""Pictures for people: where an attention model looked for each word, what an explanation rests on (image
regions; a clip's frames and sound), and training curves.

Everything draws with matplotlib's object-oriented API on the Agg canvas (`Figure.savefig`), never
through pyplot, so nothing needs a display and the caller's matplotlib backend is left alone.

Example:
    >>> import tempfile
    >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
    >>> tmp = tempfile.TemporaryDirectory()
    >>> log = bundled_model_dir(ATTENTION_LSTM) / "log.jsonl"  # the training log of the bundled captioner
    >>> plot_training_curves(log, f"{tmp.name}/curves.png").is_file()
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from ..data.images import load_image
from ..errors import DataError, InputError
from ..generate import GenerationConfig

HEAT_ALPHA = 0.5  # weight of the colour map over the image: both stay readable
HOT_SHARE = 4.0   # a region is drawn fully hot from 4x its uniform share of attention (see below)
GRID_COLUMNS = 5


def _centre_square(image: Image.Image) -> Image.Image:
    # The model sees the centre square of the image (data.images.image_to_uint8), so the attention
    # grid covers that square, not the whole picture.
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _file_word(word: str) -> str:
    """A word made safe for a file name: "<unk>" -> "unk", "," -> "comma"."""
    safe = re.sub(r"[^\w-]+", "", word).strip("._") or {",": "comma", ".": "period"}.get(word, "token")
    return safe[:40]


def attention_overlays(image: Image.Image, attention: torch.Tensor) -> list[Image.Image]:
    """One RGB image per row of `attention` (T, N): the map, upsampled and colour-coded, over the image.

    Each map is scaled to its own peak (or to HOT_SHARE / N if the peak is lower), so a word's
    focus shows clearly while near-uniform attention stays cool.

    Example:
        >>> overlays = attention_overlays(Image.new("RGB", (64, 64)), torch.full((2, 16), 1 / 16))
        >>> len(overlays), overlays[0].size
        (2, (64, 64))
    """
    if attention.ndim != 2:
        raise ValueError(f"attention must be (T, N), got shape {tuple(attention.shape)}")
    side = math.isqrt(attention.shape[1])
    if side * side != attention.shape[1]:
        raise ValueError(f"attention over {attention.shape[1]} regions is not a square grid")
    image = _centre_square(image.convert("RGB"))
    if not len(attention):
        return []
    weights = attention.detach().float().cpu()  # (T, N)
    # Full heat = the word's peak weight, but at least HOT_SHARE x the uniform share 1/N: flat
    # attention (an untrained model) then reads as cool everywhere instead of hot everywhere.
    scale = weights.amax(dim=1).clamp_min(HOT_SHARE / weights.shape[1]).view(-1, 1, 1)
    maps = F.interpolate(weights.view(-1, 1, side, side), size=image.size[::-1], mode="bicubic",
                         align_corners=False)[:, 0]
    maps = (maps / scale).clamp(0, 1)  # (T, H, W)
    colours = colormaps["jet"](maps.numpy())[..., :3]  # (T, H, W, 3) in [0, 1]
    base = np.asarray(image, dtype=np.float32) / 255.0
    blended = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * colours
    return [Image.fromarray(np.rint(b * 255).astype(np.uint8)) for b in blended]


def explanation_overlay(image: Image.Image, regions: torch.Tensor, side: int = 256) -> Image.Image:
    """An explanation's (G, G) cell importances (eval/explain.py) in heat colours over the image's centre square,
    scaled to `side` px (the square the model sees); cells that lower the output's score stay cool.

    Example:
        >>> explanation_overlay(Image.new("RGB", (80, 60)), torch.eye(4)).size
        (256, 256)
    """
    square = ImageOps.fit(image.convert("RGB"), (side, side), Image.Resampling.BICUBIC)
    return attention_overlays(square, regions.detach().float().clamp(min=0).reshape(1, -1))[0]


TIMELINE_BAR = 56        # px of a bar row's positive half; the negative half is a third of it
WARM, COOL, INK = (230, 120, 40), (70, 130, 220), (220, 220, 220)


def _bars(draw: ImageDraw.ImageDraw, spans: list[tuple[float, float]], scores: Sequence[float], top: int,
          label: str) -> int:
    """Bars over x spans (px): up and warm for a score drop (the output rests on it), down and cool for a rise;
    each row scaled to its own largest |score|. Returns the y below the row."""
    scale = max((abs(v) for v in scores), default=0.0) or 1.0
    zero = top + 14 + TIMELINE_BAR
    draw.text((spans[0][0] if spans else 4, top), f"{label} (bar height: {scale:.2f})", fill=INK)
    draw.line([(spans[0][0], zero), (spans[-1][1], zero)], fill=INK)
    for (x0, x1), v in zip(spans, scores, strict=True):
        h = v / scale * (TIMELINE_BAR if v > 0 else TIMELINE_BAR // 3)
        draw.rectangle([x0 + 1, min(zero, zero - h), max(x0 + 1, x1 - 2), max(zero, zero - h)],
                       fill=WARM if v > 0 else COOL)
    return zero + TIMELINE_BAR // 3 + 4


def explanation_timeline(frames: torch.Tensor | None, frame_scores: Sequence[float],
                         windows: Sequence[tuple[float, float]], sound_scores: Sequence[float], title: str = "",
                         thumb: int = 56) -> Image.Image:
    """A clip explanation (eval/explain_video.py) on one time axis: the frames (T, 3, H, W) in [0, 1] as a strip of
    thumbnails with each frame's score as a bar below it, then each sound window's (start, end) seconds score as a
    bar over its stretch of the clip, with the seconds marked. A clip without frames or sound leaves its rows out.

    Example:
        >>> explanation_timeline(torch.rand(4, 3, 16, 16), [0.1, 2.0, -0.5, 0.0], [(0.0, 1.0), (1.0, 2.0)],
        ...                      [0.3, -0.1], "answer: star").size
        (240, 292)
    """
    t = len(frame_scores)
    margin, width = 8, max(t, 4) * thumb
    end = max([b for _, b in windows], default=float(t)) or 1.0
    canvas = Image.new("RGB", (width + 2 * margin, 64 + thumb + 3 * (TIMELINE_BAR + 48)), (24, 24, 28))  # cropped below
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 4), title, fill=INK)
    y = 20
    if t and frames is not None:
        pictures = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        for i, picture in enumerate(pictures):
            canvas.paste(Image.fromarray(picture).resize((thumb - 2, thumb - 2), Image.Resampling.BICUBIC),
                         (margin + i * thumb + 1, y))
        y += thumb + 2
    if t:
        y = _bars(draw, [(margin + i * thumb, margin + (i + 1) * thumb) for i in range(t)], frame_scores, y,
                  "frames: score drop") + 4
    if windows:
        def x(s: float) -> float:
            return margin + s / end * width

        y = _bars(draw, [(x(a), x(b)) for a, b in windows], sound_scores, y, "sound windows: score drop")
        step = 0.5 if end <= 5 else float(math.ceil(end / 10))
        for k in range(int(end / step) + 1):
            draw.line([(x(k * step), y), (x(k * step), y + 4)], fill=INK)
            draw.text((x(k * step) + 2, y + 5), f"{k * step:g}s", fill=INK)
        y += 18
    return canvas.crop((0, 0, canvas.width, y + margin))


def attention_heatmaps(image: Image.Image, words: list[str], attention: torch.Tensor, out_dir: str | Path,
                       grid: bool = True) -> list[Path]:
    """Write one heatmap PNG per word, `{idx:02d}_{word}.png`, and a `grid.png` of all of them.

    Args:
        image: the captioned image (its centre square is what the model saw and what is drawn).
        words: the generated words, one per row of `attention`.
        attention: (T, N) attention weights over an h x w grid of regions, N = h * w, h = w.
        out_dir: created if needed.
        grid: also write `grid.png`: the image, then one panel per word with the word as its title.

    Returns:
        The written paths: the per-word PNGs in word order, then grid.png (if `grid`).
        Per-word PNGs have the size of the image's centre square.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> attention = torch.softmax(torch.randn(2, 16), -1)  # 2 words over a 4 x 4 grid
        >>> paths = attention_heatmaps(Image.new("RGB", (80, 64)), ["a", "<unk>"], attention, f"{tmp.name}/a")
        >>> [p.name for p in paths], Image.open(paths[0]).size
        (['00_a.png', '01_unk.png', 'grid.png'], (64, 64))
        >>> tmp.cleanup()
    """
    if len(words) != len(attention):
        raise ValueError(f"{len(words)} words but {len(attention)} rows of attention")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays = attention_overlays(image, attention)
    paths = []
    for idx, (word, overlay) in enumerate(zip(words, overlays, strict=True)):
        path = out_dir / f"{idx:02d}_{_file_word(word)}.png"
        overlay.save(path)
        paths.append(path)
    if grid:
        paths.append(_save_grid(_centre_square(image.convert("RGB")), words, overlays, out_dir / "grid.png"))
    return paths


def _save_grid(image: Image.Image, words: list[str], overlays: list[Image.Image], path: Path) -> Path:
    panels = [("image", image), *zip(words, overlays, strict=True)]
    cols = min(GRID_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows), dpi=100)
    for i, (title, picture) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(picture)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return path


def caption_heatmaps(model: Any, image_path: str | Path, out_dir: str | Path,
                     **generation: Any) -> tuple[list[str], list[Path]]:
    """Caption one image with attention and write the best caption's heatmaps into `out_dir`.

    Args:
        model: a `Captioner` whose decoder returns attention (e.g. attention_lstm).
        image_path: the image file.
        out_dir: where the PNGs go.
        **generation: `GenerationConfig` fields (strategy, beam_size, num_return_sequences, ...).

    Returns:
        (captions best first, written PNG paths).

    Raises:
        InputError: the model returns no attention (e.g. the seed LSTM has none).

    Example:
        >>> import tempfile
        >>> import polymodal
        >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
        >>> from polymodal.data.shapes import Scene, ShapeObject, render
        >>> model = polymodal.load(bundled_model_dir(ATTENTION_LSTM))  # an attention LSTM trained on Shapes World
        >>> tmp = tempfile.TemporaryDirectory()
        >>> scene = Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), background=(40, 40, 40))
        >>> render(scene, 64).save(f"{tmp.name}/a.png")
        >>> captions, paths = caption_heatmaps(model, f"{tmp.name}/a.png", f"{tmp.name}/out", beam_size=3)
        >>> captions, [p.name for p in paths[:2]], paths[-1].name  # one PNG per word, then all in a grid
        (['there is a large red circle'], ['00_there.png', '01_is.png'], 'grid.png')
        >>> tmp.cleanup()
    """
    generation.setdefault("max_len", model.cfg.decoder.max_len)
    image = load_image(image_path)
    model.eval()
    hyps = model.generate(model.preprocess([image]), GenerationConfig(**generation, return_attention=True))[0]
    best = hyps[0]
    if best.attention is None:
        raise InputError(f"decoder {model.cfg.decoder.name!r} has no attention, so there is nothing to draw; "
                         f"--heatmaps needs an attention model such as attention_lstm")
    tokenizer = model.tokenizer
    words = [tokenizer.decode([token]) for token in best.tokens]
    paths = attention_heatmaps(image, words, best.attention, out_dir)
    return [tokenizer.decode(h.tokens) for h in hyps], paths


# ----------------------------------------------------------------------------- training curves
def read_log_series(log_jsonl: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} for every numeric key of a trainer `log.jsonl`.

    Records without a numeric "step" (or bools, strings, nested dicts such as the final
    "summary") are ignored.

    Example:
        >>> from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
        >>> steps, losses = read_log_series(bundled_model_dir(ATTENTION_LSTM) / "log.jsonl")["loss"]
        >>> steps[:3], [round(loss, 2) for loss in losses[:2]]
        ([25, 50, 75], [3.16, 1.96])
    """
    path = Path(log_jsonl)
    if not path.is_file():
        raise DataError(f"{path}: training log not found; a run writes log.jsonl into its out_dir")
    series: dict[str, tuple[list[int], list[float]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg}); "
                            f"remove the broken line (a crash can cut the last one short)") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not _is_number(step):
            continue
        for key, value in record.items():
            if key not in ("step", "epoch") and _is_number(value) and math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _panel(key: str) -> str:
    if "loss" in key:
        return "loss"
    if key.startswith("val_"):
        return "validation metrics"
    return "learning rate" if key == "lr" else "training statistics"


def plot_training_curves(log_jsonl: str | Path, out_png: str | Path) -> Path:
    """Plot every numeric series of a trainer log.jsonl against the step, grouped into panels.

    Panels: losses (train and val), validation metrics, learning rate, other training statistics
    (e.g. grad_norm); only panels with data are drawn.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> log = Path(tmp.name, "log.jsonl")
        >>> _ = log.write_text('{"step": 1, "loss": 2.0, "lr": 0.01}\\n{"step": 2, "loss": 1.5, "lr": 0.02}')
        >>> plot_training_curves(log, Path(tmp.name, "curves.png")).name  # a loss and a learning-rate panel
        'curves.png'
        >>> tmp.cleanup()
    """
    series = read_log_series(log_jsonl)
    if not series:
        raise DataError(f"{log_jsonl}: no numeric values with a 'step' to plot; is this a polymodal log.jsonl?")
    panels: dict[str, list[str]] = {}
    for key in series:
        panels.setdefault(_panel(key), []).append(key)
    order = [p for p in ("loss", "validation metrics", "learning rate", "training statistics") if p in panels]
    fig = Figure(figsize=(6.5, 2.8 * len(order)), dpi=100)
    for i, name in enumerate(order):
        ax = fig.add_subplot(len(order), 1, i + 1)
        for key in panels[name]:
            steps, values = series[key]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
