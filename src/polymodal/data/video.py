"""Video files: probe, sample frames (uniform, fps, codec key frames) and write mp4 with sound, via PyAV.

Frames are decoded as a stream and only the chosen ones are kept, so a long file costs memory for
the frames returned, not for the file; a sample time more than `SEEK_SECONDS` ahead is reached by
seeking to the key frame before it, so a two-hour film costs about n short decodes, not two hours of
decoding. Samples go by timestamps, so variable frame rate video is sampled evenly in time. Frames
come out upright (a phone video's display-matrix rotation is applied) and any stored size, 1 x 1
included, is resized to `size`. Videos longer than `MAX_SECONDS` are refused with the command
that cuts them. Every failure a user can cause (missing, truncated, corrupt, too long or frameless
file) is one `DataError` line that names the file and the fix.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> frames = np.zeros((16, 32, 32, 3), np.uint8)
    >>> frames[8:] = 255  # 2 seconds at 8 fps: black, then white
    >>> path = write_video(f"{tmp.name}/clip.mp4", frames, fps=8)
    >>> clip = read_frames(path, n=4, size=16)
    >>> clip.frames.shape, clip.times, (clip.frames[:, 0, 0, 0] > 128).tolist()
    (torch.Size([4, 3, 16, 16]), [0.25, 0.75, 1.25, 1.75], [False, False, True, True])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, InputError
from ..registry import SAMPLERS
from .audio import _decode, _open

MAX_SECONDS = 3 * 3600.0  # longest video `read_frames` samples (a feature film); cut longer ones first
SEEK_SECONDS = 2.0        # a sample further ahead than this is reached by seeking, not by decoding up to it
NO_VIDEO = "has no video track; pass a video file (mp4, mkv, webm, avi, ...)"
NO_FRAMES = ("the video track is empty or truncated; re-encode it (e.g. `ffmpeg -i IN OUT.mp4`) "
             "or replace the file")


@dataclass
class VideoInfo:
    path: str
    duration: float                   # seconds (from the container, or the last packet)
    fps: float
    width: int
    height: int
    has_audio: bool


@dataclass
class Clip:
    """Sampled frames (T, 3, S, S) uint8 and their timestamps in seconds."""

    frames: torch.Tensor
    times: list[float]


def media_tracks(path: str | Path) -> set[str]:
    """Which of "video" and "audio" a file holds (a silent video: {"video"}; a wav: {"audio"}), decoding nothing.

    Example:
        >>> import tempfile
        >>> from polymodal.data.audio import tone, write_wav
        >>> tmp = tempfile.TemporaryDirectory()
        >>> media_tracks(write_wav(f"{tmp.name}/a.wav", tone(440, 0.5), 16000))
        {'audio'}
        >>> tmp.cleanup()
    """
    container = _open(path)
    try:
        return {kind for kind, streams in (("video", container.streams.video), ("audio", container.streams.audio))
                if streams}
    finally:
        container.close()


def probe(path: str | Path) -> VideoInfo:
    """Duration, frame rate, size and whether there is sound, without decoding any frame."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        duration = None
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6  # microseconds
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        if duration is None:  # demux packets (no decoding) to find the last timestamp
            last = [float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None]
            duration = max(last) + 1 / fps if last else 0.0
        return VideoInfo(str(path), duration, fps, stream.codec_context.width, stream.codec_context.height,
                         bool(container.streams.audio))
    finally:
        container.close()


def _video_stream(container, path: str | Path):
    if not container.streams.video:
        raise DataError(f"{path}: {NO_VIDEO}")
    return container.streams.video[0]


def _seconds(frame, stream) -> float:
    return float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time or 0.0)


def _rgb(frame, size: int | None) -> np.ndarray:
    """A decoded frame as HxWx3 uint8 RGB (size x size if `size`), turned upright by its display rotation."""
    img = frame.to_ndarray(format="rgb24", **({"width": size, "height": size} if size else {}))
    turns = round(getattr(frame, "rotation", 0) / 90) % 4  # counterclockwise degrees (-90: a phone held upright)
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def iter_frames(path: str | Path, size: int | None = None, keyframes_only: bool = False
                ) -> Iterator[tuple[float, np.ndarray]]:
    """Stream (time in seconds, HxWx3 uint8 RGB upright frame) pairs; `size` resizes to size x size."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        for frame in _decode(container, stream, path):
            yield _seconds(frame, stream), _rgb(frame, size)
    finally:
        container.close()


def _pick_nearest(path: str | Path, targets: list[float], size: int | None) -> Clip:
    """For each target time (ascending) the decoded frame nearest to it; only those are converted and kept.

    A target more than `SEEK_SECONDS` past the current frame is reached by one seek to the key frame
    before it (at most one per target, so a file that cannot seek is still read, by decoding on).
    """
    import av

    picked: list[tuple[float, np.ndarray]] = []
    prev = None  # (time, frame) of the last decoded frame
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        frames, sought, j = _decode(container, stream, path), -1, 0
        while j < len(targets) and (frame := next(frames, None)) is not None:
            t = _seconds(frame, stream)
            if targets[j] - t > SEEK_SECONDS and sought < j:
                sought = j
                try:  # to the key frame at or before the target; a file that cannot seek is decoded on
                    container.seek(int(targets[j] / stream.time_base), stream=stream, backward=True)
                    frames = _decode(container, stream, path)
                except av.error.FFmpegError:
                    pass
            while j < len(targets) and t >= targets[j]:
                best = prev if prev is not None and targets[j] - prev[0] < t - targets[j] else (t, frame)
                picked.append((best[0], _rgb(best[1], size)))
                j += 1
            prev = (t, frame)
        if prev is None:
            raise DataError(f"{path}: no video frame could be decoded; {NO_FRAMES}")
        if j < len(targets):  # targets past the last frame get the last frame
            picked += [(prev[0], _rgb(prev[1], size))] * (len(targets) - j)
    finally:
        container.close()
    stacked = np.stack([img for _, img in picked])
    return Clip(torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), [t for t, _ in picked])


def sample_uniform(path: str | Path, n: int, size: int | None, fps: float | None = None) -> Clip:
    """n frames at the centres of n equal slices of the video."""
    duration = probe(path).duration
    return _pick_nearest(path, [(i + 0.5) * duration / n for i in range(n)], size)


def sample_fps(path: str | Path, n: int, size: int | None, fps: float | None = None) -> Clip:
    """A frame every 1 / fps seconds from the start, at most n."""
    if not fps or fps <= 0:
        raise DataError("frame sampling 'fps' needs fps > 0")
    duration = probe(path).duration
    count = max(min(n, int(duration * fps)), 1)
    return _pick_nearest(path, [i / fps for i in range(count)], size)


def sample_keyframes(path: str | Path, n: int, size: int | None, fps: float | None = None) -> Clip:
    """The codec's key frames (I-frames), at most n of them, evenly thinned if there are more."""
    kept: list[tuple[float, np.ndarray]] = []
    stride = 1
    for i, item in enumerate(iter_frames(path, size, keyframes_only=True)):
        if i % stride == 0:
            kept.append(item)
        if len(kept) > 2 * n:  # thin as we go: memory stays O(n) for any length
            kept, stride = kept[::2], stride * 2
    if not kept:
        raise DataError(f"{path}: no key frame could be decoded; {NO_FRAMES}")
    pick = np.linspace(0, len(kept) - 1, min(n, len(kept))).round().astype(int)
    frames = np.stack([kept[i][1] for i in pick])
    return Clip(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), [kept[i][0] for i in pick])


def read_frames(path: str | Path, n: int = 16, size: int | None = 64, sampling: str = "uniform",
                fps: float | None = None) -> Clip:
    """Sample frames of any video PyAV can read.

    Args:
        path: the video file.
        n: frames wanted (fewer for `fps` on a short video or `keyframes` with few key frames).
        size: resize each frame to size x size; None keeps the stored size.
        sampling: "uniform" | "fps" | "keyframes" (a key of `SAMPLERS`).
        fps: frames per second for "fps" sampling.

    Raises:
        DataError: missing, truncated, corrupt or frameless file, or one longer than `MAX_SECONDS`.
        InputError: n < 1.
    """
    if n < 1:
        raise InputError(f"{path}: n (frames to sample) must be at least 1, got {n}")
    sampler: Callable[..., Clip] = SAMPLERS.get(sampling)
    duration = probe(path).duration
    if duration > MAX_SECONDS:
        raise DataError(f"{path}: the video is {duration / 60:.0f} minutes long, over the {MAX_SECONDS / 60:.0f}-minute "
                        f"limit (polymodal.data.video.MAX_SECONDS); cut it first, e.g. "
                        f"`ffmpeg -i {Path(path).name} -t {MAX_SECONDS:.0f} -c copy part.mp4`")
    return sampler(path, n, size, fps)


def write_video(path: str | Path, frames: np.ndarray | torch.Tensor, fps: int,
                audio: np.ndarray | torch.Tensor | None = None, sample_rate: int = 16000, crf: int = 12) -> Path:
    """Write frames (T, H, W, 3) uint8 as H.264 mp4, with a mono AAC track if `audio` (S,) is given.

    H and W must be even (yuv420p). The file appears atomically (written beside it, then renamed).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> frames, sound = np.zeros((8, 32, 32, 3), np.uint8), np.zeros(16000)  # 1 second
        >>> path = write_video(f"{tmp.name}/a.mp4", frames, fps=8, audio=sound)
        >>> info = probe(path)
        >>> info.fps, info.width, info.height, info.has_audio
        (8.0, 32, 32, True)
        >>> tmp.cleanup()
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise DataError(f"write_video: frames must be (T, H, W, 3) with even H and W, got {frames.shape}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    with av.open(str(tmp), "w", format="mp4") as out:
        vstream = out.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vstream.options = {"crf": str(crf), "preset": "veryfast", "g": str(fps)}  # a key frame every second
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate, layout="mono")
        for img in frames:
            out.mux(vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vstream.encode(None))
        if astream is not None:
            pcm = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            step = 1024  # AAC frame size
            for i in range(0, pcm.shape[1], step):
                chunk = np.ascontiguousarray(pcm[:, i:i + step])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, i
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    os.replace(tmp, path)
    return path
