"""Media cases: video (data/video.py) and audio (data/audio.py) files, decoded through PyAV.

Bad files (truncated, empty, impostors, missing streams, zero-length audio) must give one
`DataError` naming the file and the fix; valid odd files (a video with sound, a silent video
read for frames, a one-sample wav) decode as documented.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.data.audio import load_audio, tone, write_wav
from polymodal.data.video import probe, read_frames, write_video
from polymodal.errors import DataError

from .cases import Case

FPS, SECONDS, RATE = 8, 2, 16000


def frames() -> np.ndarray:
    """2 s of 32 x 32 frames, a moving bright square on noise (so the encoder produces real data)."""
    rng = np.random.default_rng(0)
    out = rng.integers(0, 60, (FPS * SECONDS, 32, 32, 3), dtype=np.uint8)
    for t in range(len(out)):
        out[t, 8:16, t:t + 8] = 250
    return out


def mp4(folder: Path, name: str, audio: bool = True) -> Path:
    sound = tone(440, SECONDS, RATE).numpy() if audio else None
    return write_video(folder / name, frames(), FPS, audio=sound, sample_rate=RATE)


def wav_bytes(samples: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.zeros(samples, "<i2").tobytes())
    return buf.getvalue()


def cut(make: Callable[[Path], Path], fraction: float | None = None, size: int | None = None) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        path = make(folder)
        data = path.read_bytes()
        path.write_bytes(data[: size if size is not None else int(len(data) * fraction)])
        return path
    return edit


def raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


def clip_frames(path: Path) -> Any:
    return read_frames(path, n=4, size=16)


def audio(path: Path) -> torch.Tensor:
    return load_audio(path, RATE)


def has_frames(n: int) -> Callable[[Any, Any], None]:
    def check(_: Any, clip: Any) -> None:
        assert tuple(clip.frames.shape) == (n, 3, 16, 16), clip.frames.shape
        assert clip.frames.dtype == torch.uint8 and len(clip.times) == n
    return check


def samples(low: int, high: int) -> Callable[[Any, Any], None]:
    def check(_: Any, wave_: torch.Tensor) -> None:
        assert low <= len(wave_) <= high, f"{len(wave_)} samples, expected {low}..{high}"
        assert torch.isfinite(wave_).all()
    return check


def media_cases() -> list[Case]:
    with_sound = lambda f: mp4(f, "clip.mp4")  # noqa: E731
    silent = lambda f: mp4(f, "silent.mp4", audio=False)  # noqa: E731
    sound_only = lambda f: write_wav(f / "sound_only.wav", tone(440, 1.0, RATE), RATE)  # noqa: E731
    out = [Case("media", f"truncated-mp4-frames-at-{round(p * 100)}pct", cut(with_sound, p), clip_frames, DataError)
           for p in (0.02, 0.1, 0.5)]
    out += [Case("media", f"truncated-mp4-audio-at-{round(p * 100)}pct", cut(with_sound, p), audio, DataError)
            for p in (0.02, 0.1)]
    out += [
        Case("media", "truncated-mp4-probe", cut(with_sound, 0.05), probe, DataError),
        Case("media", "mp4-header-only", cut(with_sound, size=40), clip_frames, DataError),
        Case("media", "zero-byte-mp4", raw("empty.mp4", b""), clip_frames, DataError),
        Case("media", "zero-byte-wav", raw("empty.wav", b""), audio, DataError),
        Case("media", "zero-length-wav", raw("no_samples.wav", wav_bytes(0)), audio, DataError),
        Case("media", "wav-header-cut", raw("cut.wav", wav_bytes(1000)[:30]), audio, DataError),
        Case("media", "video-with-no-video-stream-frames", sound_only, clip_frames, DataError, contains="no video"),
        Case("media", "video-with-no-video-stream-probe", sound_only, probe, DataError, contains="no video"),
        Case("media", "silent-video-asked-for-audio", silent, audio, DataError, contains="no audio"),
        Case("media", "html-named-mp4", raw("page.mp4", b"<!DOCTYPE html><html></html>"), clip_frames, DataError),
        Case("media", "jpeg-named-mp4", raw("photo.mp4", b"\xff\xd8\xff\xe0" + b"\x00" * 200), clip_frames, DataError),
        Case("media", "random-bytes-named-wav", raw("noise.wav", np.random.default_rng(1).bytes(5000)), audio,
             DataError),
        Case("media", "text-named-wav", raw("notes.wav", b"these are my notes\n" * 20), audio, DataError),
        Case("media", "missing-video", lambda f: f / "nope.mp4", clip_frames, DataError),
        Case("media", "directory-named-mp4", lambda f: _mkdir(f / "dir.mp4"), clip_frames, DataError),
        # valid odd files: documented successes
        Case("media", "video-with-sound-gives-frames", with_sound, clip_frames, check=has_frames(4)),
        Case("media", "video-with-sound-gives-audio", with_sound, audio, check=samples(RATE * SECONDS - 2048,
                                                                                       RATE * SECONDS + 2048)),
        Case("media", "silent-video-gives-frames", silent, clip_frames, check=has_frames(4)),
        Case("media", "one-sample-wav", raw("one.wav", wav_bytes(1)), audio, check=samples(1, 1)),
        Case("media", "wav-at-8khz-resampled", lambda f: write_wav(f / "low.wav", tone(300, 1.0, 8000), 8000), audio,
             check=samples(RATE - 200, RATE + 200)),
    ]
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
