"""Audio: decode any file PyAV reads (wav, flac, mp3, the audio track of a video) and log-mel spectrograms.

Decoding is streamed: `iter_audio` yields mono float chunks at the requested sample rate and never
holds the whole file, and `load_audio` stops decoding once `duration` seconds are in hand, so a
two-hour file costs no more than the window asked for. The log-mel spectrogram is `torch.stft`
and a triangular mel filterbank (HTK mel scale, Slaney area normalisation), no torchaudio.

Example:
    >>> wave = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)
    >>> log_mel(wave, MelConfig()).shape
    torch.Size([40, 63])
"""

from __future__ import annotations

import math
import wave as wavefile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

MEDIA_HINT = "re-encode it (e.g. `ffmpeg -i IN OUT.wav`) or replace the file"


@dataclass
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 512                  # 32 ms windows at 16 kHz
    hop_length: int = 256             # 16 ms hop: 62.5 spectrogram frames per second
    n_mels: int = 40
    f_min: float = 50.0
    f_max: float = 8000.0             # at most sample_rate / 2
    floor: float = 1e-5               # log(max(power, floor)): silence is a finite, constant value


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_frequencies(cfg: MelConfig) -> torch.Tensor:
    """Centre frequency in Hz of each of the `n_mels` filters (n_mels,)."""
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(cfg.f_min)), float(hz_to_mel(cfg.f_max)), cfg.n_mels + 2))
    return edges[1:-1].float()


def mel_filterbank(cfg: MelConfig) -> torch.Tensor:
    """Triangular filters (n_mels, n_fft // 2 + 1) over the STFT bins, each with unit area (Slaney norm).

    Example:
        >>> mel_filterbank(MelConfig(n_mels=8)).shape
        torch.Size([8, 257])
    """
    if not 0 <= cfg.f_min < cfg.f_max <= cfg.sample_rate / 2:
        raise DataError(f"mel config: need 0 <= f_min < f_max <= sample_rate / 2, got {cfg.f_min}, {cfg.f_max}")
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(cfg.f_min)), float(hz_to_mel(cfg.f_max)), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return (bank * (2.0 / (upper - lower))).float()  # equal area: wide high filters are not louder


_BANKS: dict[tuple, torch.Tensor] = {}


def log_mel(wave: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Log-mel spectrogram of a mono waveform (S,) or a batch (B, S): (n_mels, frames) or (B, n_mels, frames).

    frames = 1 + S // hop_length (centred windows, reflect padding).
    """
    key = (cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    if key not in _BANKS:
        _BANKS[key] = mel_filterbank(cfg)
    x = wave.float()
    if x.shape[-1] < cfg.n_fft // 2 + 1:  # reflect padding needs a few samples: pad very short input
        x = torch.nn.functional.pad(x, (0, cfg.n_fft // 2 + 1 - x.shape[-1]))
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft, device=x.device),
                      center=True, return_complex=True)
    power = spec.abs() ** 2  # (..., F, frames)
    mel = torch.matmul(_BANKS[key].to(x.device), power)  # (..., n_mels, frames)
    return torch.log(mel.clamp_min(cfg.floor))


# ----------------------------------------------------------------------------- decoding
def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a media file" if path.is_dir() else "media file not found"
        raise DataError(f"{path}: {what}; check the path or remove it from the annotations")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: cannot open media ({err.__class__.__name__}: {err}); the file is truncated, "
                        f"corrupt or not audio/video; {MEDIA_HINT}") from None


def iter_audio(path: str | Path, sample_rate: int = 16000, start: float = 0.0,
               chunk_seconds: float = 10.0) -> Iterator[torch.Tensor]:
    """Stream the first audio track as mono float32 chunks (about `chunk_seconds` each) at `sample_rate`.

    Any stored rate (8 kHz, 22.05 kHz, 44.1 kHz, 48 kHz, ...) is resampled to `sample_rate`, and the
    channels are averaged (the same sound on both stereo channels keeps its amplitude).

    Raises:
        DataError: missing or unreadable file, no audio track, or data corrupt mid-stream.
    """
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise DataError(f"{path}: has no audio track; pass a file with sound (wav, flac, mp3, a video with audio)")
        stream = container.streams.audio[0]
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, any_frame=False, backward=True)
        # keep the channels and average them here: FFmpeg's own stereo -> mono downmix adds them at -3 dB,
        # which leaves the same sound on both channels 1.41 times louder (and past 1.0 when at full scale)
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pending: list[np.ndarray] = []
        have, skip = 0, None
        target = max(int(chunk_seconds * sample_rate), 1)
        for frame in _decode(container, stream, path):
            if skip is None:  # after a seek, drop what lies before `start`
                t0 = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
                skip = max(int(round((start - t0) * sample_rate)), 0)
            for out in resampler.resample(frame):
                arr = out.to_ndarray().mean(axis=0)  # (channels, samples) -> (samples,)
                if skip:
                    arr, skip = arr[skip:], max(skip - len(arr), 0)
                pending.append(arr)
                have += len(arr)
            if have >= target:
                yield torch.from_numpy(np.concatenate(pending))
                pending, have = [], 0
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().mean(axis=0))
        if pending:
            yield torch.from_numpy(np.concatenate(pending))
    finally:
        container.close()


def _decode(container, stream, path: str | Path) -> Iterator:
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as err:
        raise DataError(f"{path}: media data is corrupt or truncated ({err}); {MEDIA_HINT}") from None


def load_audio(path: str | Path, sample_rate: int = 16000, start: float = 0.0,
               duration: float | None = None) -> torch.Tensor:
    """Mono float32 waveform (S,) of `duration` seconds from `start` (default: to the end), at `sample_rate`.

    A file with an audio track but no samples (e.g. a wav of zero length) is an error, not an empty
    tensor: nothing downstream can use zero samples. Ask for `duration` to get a fixed length.

    Raises:
        DataError: missing, unreadable or truncated file, no audio track, or no samples in it.

    Example:
        >>> import tempfile
        >>> from polymodal.data.video import write_video
        >>> tmp = tempfile.TemporaryDirectory()
        >>> frames = np.zeros((16, 32, 32, 3), np.uint8)  # 2 seconds at 8 fps
        >>> path = write_video(f"{tmp.name}/clip.mp4", frames, fps=8, audio=tone(440, 2.0))
        >>> load_audio(path, 16000, start=0.5, duration=1.0).shape
        torch.Size([16000])
        >>> load_audio(path, 8000, duration=4.0).shape  # past the end: zero-padded
        torch.Size([32000])
        >>> tmp.cleanup()
    """
    want = None if duration is None else int(round(duration * sample_rate))
    chunks, have = [], 0
    for chunk in iter_audio(path, sample_rate, start, chunk_seconds=min(duration or 10.0, 10.0)):
        chunks.append(chunk)
        have += len(chunk)
        if want is not None and have >= want:
            break
    if not chunks:
        raise DataError(f"{path}: the audio track is empty (no samples); {MEDIA_HINT}")
    wave = torch.cat(chunks)
    if want is not None:
        wave = torch.nn.functional.pad(wave[:want], (0, max(want - len(wave), 0)))
    return wave


def fit_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """Cut or zero-pad a waveform (S,) to exactly `samples`."""
    return torch.nn.functional.pad(wave[:samples], (0, max(samples - len(wave), 0)))


def write_wav(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write a mono float waveform in [-1, 1] as 16-bit PCM WAV (the standard library writer)."""
    pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    path = Path(path)
    with wavefile.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def tone(freq: float, seconds: float, sample_rate: int = 16000, amplitude: float = 0.5) -> torch.Tensor:
    """A sine tone (S,), e.g. to check a pipeline: its log-mel peaks in the filter nearest `freq`."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()
