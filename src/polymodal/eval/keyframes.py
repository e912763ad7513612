"""Key frames: the k most informative frames of a video, by how much each frame changes the picture.

Every frame (or every frame at `analysis_fps`) is described by a feature vector: the pooled region
features of an image encoder (e.g. a trained video model's frame encoder), or, without one, the
frame itself at 16 x 16 pixels. A frame's change is the distance between its feature and the
previous frame's (L2-normalised features); its onset score (the default) is how much that change
grew since the frame before, which marks where something starts (a cut, an object appearing or
starting to move) rather than every frame of a motion. The key frames are the k highest peaks, at
least `min_gap` frames apart. Decoding is streamed twice: once to score (features only are kept), once
to fetch the k chosen frames at full size, so any length of video fits in memory.

Example:
    >>> import tempfile
    >>> from polymodal.data.video import write_video
    >>> tmp = tempfile.TemporaryDirectory()
    >>> video = np.zeros((24, 32, 32, 3), np.uint8)  # 3 seconds at 8 fps: black, red, blue
    >>> video[8:], video[16:] = [255, 0, 0], [0, 0, 255]
    >>> frames = extract_keyframes(write_video(f"{tmp.name}/clip.mp4", video, fps=8), k=2)
    >>> [(f.index, round(f.time, 2)) for f in frames]  # the two cuts
    [(8, 1.0), (16, 2.0)]
    >>> [p.name for p in save_keyframes(frames, f"{tmp.name}/out")]
    ['keyframe_00_0001.00s.png', 'keyframe_01_0002.00s.png', 'contact_sheet.png', 'keyframes.json']
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..data.images import normalize
from ..data.video import iter_frames
from ..errors import DataError, InputError
from ..models.video_captioner import pick_peaks

FrameFeatures = Callable[[torch.Tensor], torch.Tensor]  # uint8 frames (B, 3, S, S) -> features (B, D)


@dataclass
class KeyFrame:
    index: int                        # position among the analysed frames
    time: float                       # seconds
    score: float                      # change score (feature distance to the previous frame)
    image: np.ndarray                 # (H, W, 3) uint8 at the stored size


def pixel_features(frames: torch.Tensor) -> torch.Tensor:
    """The frames themselves at 16 x 16 pixels, flattened: (B, 3 * 256)."""
    return F.interpolate(frames.float() / 255.0, size=(16, 16), mode="area").flatten(1)


def encoder_features(encoder: torch.nn.Module, grid: int = 4) -> FrameFeatures:
    """Features from an image encoder: its regions pooled to grid x grid, flattened."""

    @torch.inference_mode()
    def features(frames: torch.Tensor) -> torch.Tensor:
        regions = encoder(normalize(frames.float() / 255.0))  # (B, N, C)
        side = int(regions.shape[1] ** 0.5)
        fmap = regions.transpose(1, 2).reshape(len(frames), -1, side, side)
        return F.adaptive_avg_pool2d(fmap, grid).flatten(1)

    return features


def change_scores(features: torch.Tensor) -> torch.Tensor:
    """(T,) distance of each frame's normalised feature to the previous one's; the first frame scores 0."""
    f = F.normalize(features.float(), dim=-1)
    d = (f[1:] - f[:-1]).norm(dim=-1)
    return torch.cat([d.new_zeros(1), d])


def onset_scores(features: torch.Tensor) -> torch.Tensor:
    """(T,) how much more a frame changes than the frame before it did: the start of a change (a cut, an
    object starting to move) scores high, the middle of a steady motion low."""
    d = change_scores(features)
    return torch.cat([d[:1], (d[1:] - d[:-1]).clamp_min(0)])


SCORES = {"change": change_scores, "onset": onset_scores}


def score_video(path: str | Path, features: FrameFeatures = pixel_features, size: int = 64,
                analysis_fps: float | None = None, batch: int = 64, score: str = "change"
                ) -> tuple[torch.Tensor, list[float]]:
    """Stream the video once: the score (T,) ("change" or "onset", see `SCORES`) and time of every analysed frame."""
    if score not in SCORES:
        raise InputError(f"unknown key-frame score {score!r}; choose from {sorted(SCORES)}")
    feats, times, pending = [], [], []
    step = 1.0 / analysis_fps if analysis_fps else 0.0
    next_t = 0.0
    for t, img in iter_frames(path, size):
        if step and t + 1e-6 < next_t:
            continue
        next_t = t + step
        times.append(t)
        pending.append(torch.from_numpy(img).permute(2, 0, 1))
        if len(pending) == batch:
            feats.append(features(torch.stack(pending)))
            pending = []
    if pending:
        feats.append(features(torch.stack(pending)))
    if not times:
        raise DataError(f"{path}: no video frame could be decoded; the file is empty or truncated")
    return SCORES[score](torch.cat(feats)), times


def extract_keyframes(path: str | Path, k: int = 5, features: FrameFeatures = pixel_features, size: int = 64,
                      analysis_fps: float | None = None, min_gap: int = 2, score: str = "onset") -> list[KeyFrame]:
    """The k frames where the picture changes most (peaks at least `min_gap` analysed frames apart), in time order.

    Raises:
        InputError: k < 1.
        DataError: unreadable or truncated video.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    scores, times = score_video(path, features, size, analysis_fps, score=score)
    chosen = pick_peaks(scores, min(k, len(times)), min_gap)
    wanted = {times[i]: i for i in chosen}
    images: dict[int, np.ndarray] = {}
    for t, img in iter_frames(path):  # second pass: only the chosen frames, at their stored size
        if t in wanted:
            images[wanted[t]] = img
        if len(images) == len(wanted):
            break
    return [KeyFrame(i, times[i], float(scores[i]), images[i]) for i in chosen if i in images]


def contact_sheet(frames: Sequence[KeyFrame], columns: int = 5, thumb: int = 160) -> Image.Image:
    """The key frames side by side, each with its time under it."""
    if not frames:
        raise InputError("no key frames to put on a contact sheet")
    columns = min(columns, len(frames))
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (thumb + 8) + 8, rows * (thumb + 28) + 8), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for n, f in enumerate(frames):
        x, y = 8 + (n % columns) * (thumb + 8), 8 + (n // columns) * (thumb + 28)
        sheet.paste(Image.fromarray(f.image).resize((thumb, thumb), Image.NEAREST), (x, y))
        draw.text((x + 4, y + thumb + 6), f"{f.time:.2f} s", fill=(235, 235, 235))
    return sheet


def save_keyframes(frames: Sequence[KeyFrame], out_dir: str | Path) -> list[Path]:
    """Write each key frame as PNG, `contact_sheet.png` and `keyframes.json`; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, f in enumerate(frames):
        path = out / f"keyframe_{n:02d}_{f.time:07.2f}s.png"
        Image.fromarray(f.image).save(path)
        paths.append(path)
    contact_sheet(frames).save(out / "contact_sheet.png")
    rows = [{"file": p.name, "time": round(f.time, 3), "frame": f.index, "score": round(f.score, 4)}
            for p, f in zip(paths, frames, strict=True)]
    (out / "keyframes.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return [*paths, out / "contact_sheet.png", out / "keyframes.json"]


def hit_rate(selected: Sequence[float], events: Sequence[float], tolerance: float = 0.25) -> float:
    """Share of event times with a selected time within `tolerance` seconds.

    Example:
        >>> hit_rate([0.5, 2.0], [0.6, 1.2, 2.1], tolerance=0.25)
        0.6666666666666666
    """
    if not events:
        return 1.0
    return sum(any(abs(s - e) <= tolerance for s in selected) for e in events) / len(events)
