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
MAX_SPEECH_SECONDS = 60.0  # longest spoken input accepted by default: a question, not a recording session
AudioSource = str | Path | bytes


class AudioTooLongError(DataError):
    """Audio over the length limit, refused before it is decoded in full (the server answers 413)."""


def _name(source: AudioSource, name: str | None) -> str:
    return name or ("audio" if isinstance(source, bytes) else str(source))


def _open(source: AudioSource, name: str | None = None):
    """A PyAV container for a file path or for bytes in memory; DataError naming the file if it does not open."""
    import io

    import av

    label = _name(source, name)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not a media file" if path.is_dir() else "media file not found"
            raise DataError(f"{label}: {what}; check the path or remove it from the annotations")
        empty = path.stat().st_size == 0
    else:
        empty = not source
    if empty:
        raise DataError(f"{label}: empty file (0 bytes); record or export it again")
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise DataError(f"{label}: cannot open media ({err.__class__.__name__}: {why}); the file is truncated, "
                        f"corrupt or not audio/video; {MEDIA_HINT}") from None


def too_long(name: str, seconds: float | None, limit: float) -> AudioTooLongError:
    """The one message for audio over `limit` seconds (`seconds`: its length, None when decoding stopped early)."""
    length = f"is {seconds:.1f} s long" if seconds is not None else "is longer than that (decoding stopped there)"
    return AudioTooLongError(f"{name}: the audio {length}, over the {limit:g} s limit; cut it to at most "
                             f"{limit:g} s (e.g. `ffmpeg -i IN -t {limit:g} OUT.wav`)")


def declared_seconds(container, stream) -> float | None:
    """The length the container's header gives (None when it gives none): known before any decoding."""
    lengths = []
    if container.duration is not None:
        lengths.append(container.duration / 1_000_000)  # AV_TIME_BASE
    if stream.duration is not None and stream.time_base is not None:
        lengths.append(float(stream.duration * stream.time_base))
    return max(lengths) if lengths else None


def iter_audio(source: AudioSource, sample_rate: int = 16000, start: float = 0.0, chunk_seconds: float = 10.0,
               max_seconds: float | None = None, name: str | None = None) -> Iterator[torch.Tensor]:
    """Stream the first audio track as mono float32 chunks (about `chunk_seconds` each) at `sample_rate`.

    `source` is a file path or the file's bytes (`name` then names it in errors). Any stored rate
    (8 kHz, 22.05 kHz, 44.1 kHz, 48 kHz, ...) is resampled to `sample_rate`, and the channels are
    averaged (the same sound on both stereo channels keeps its amplitude). With `max_seconds`, audio
    longer than that (from `start`) is refused: from the header's length before decoding, else as
    soon as decoding passes the limit, so a 30-minute file costs no more than `max_seconds` of it.

    Raises:
        DataError: missing, empty or unreadable file, no audio track, or data corrupt mid-stream.
        AudioTooLongError: over `max_seconds`.
    """
    import av

    label = _name(source, name)
    container = _open(source, label)
    try:
        if not container.streams.audio:
            raise DataError(f"{label}: has no audio track; pass a file with sound (wav, flac, mp3, a video with audio)")
        stream = container.streams.audio[0]
        declared = declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared - start > max_seconds:
            raise too_long(label, declared - start, max_seconds)
        limit = None if max_seconds is None else int(max_seconds * sample_rate)
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, any_frame=False, backward=True)
        # keep the channels and average them here: FFmpeg's own stereo -> mono downmix adds them at -3 dB,
        # which leaves the same sound on both channels 1.41 times louder (and past 1.0 when at full scale)
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pending: list[np.ndarray] = []
        have, total, skip = 0, 0, None
        target = max(int(chunk_seconds * sample_rate), 1)
        for frame in _decode(container, stream, label):
            if skip is None:  # after a seek, drop what lies before `start`
                t0 = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
                skip = max(int(round((start - t0) * sample_rate)), 0)
            for out in resampler.resample(frame):
                arr = out.to_ndarray().mean(axis=0)  # (channels, samples) -> (samples,)
                if skip:
                    arr, skip = arr[skip:], max(skip - len(arr), 0)
                pending.append(arr)
                have, total = have + len(arr), total + len(arr)
            if limit is not None and total > limit:  # the header said nothing, or less than the truth
                raise too_long(label, None, max_seconds)  # type: ignore[arg-type]
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


def load_audio(source: AudioSource, sample_rate: int = 16000, start: float = 0.0, duration: float | None = None,
               max_seconds: float | None = None, name: str | None = None) -> torch.Tensor:
    """Mono float32 waveform (S,) of `duration` seconds from `start` (default: to the end), at `sample_rate`.

    `source` is a file path or the file's bytes (`name` names them in errors). A file with an audio
    track but no samples (e.g. a wav of zero length) is an error, not an empty tensor: nothing
    downstream can use zero samples. Ask for `duration` to get a fixed length; `max_seconds` refuses
    longer audio before decoding it all (see `iter_audio`).

    Raises:
        DataError: missing, empty, unreadable or truncated file, no audio track, or no samples in it.
        AudioTooLongError: more than `max_seconds` of audio.

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
        >>> load_audio(path, max_seconds=1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        polymodal.data.audio.AudioTooLongError: ...clip.mp4: the audio is 2.0 s long, over the 1 s limit; ...
        >>> tmp.cleanup()
    """
    want = None if duration is None else int(round(duration * sample_rate))
    if max_seconds is not None and duration is not None and duration <= max_seconds:
        max_seconds = None  # a window within the limit: the rest of the file is never decoded
    chunks, have = [], 0
    for chunk in iter_audio(source, sample_rate, start, chunk_seconds=min(duration or 10.0, 10.0),
                            max_seconds=max_seconds, name=name):
        chunks.append(chunk)
        have += len(chunk)
        if want is not None and have >= want:
            break
    if not chunks:
        raise DataError(f"{_name(source, name)}: the audio track is empty (no samples); {MEDIA_HINT}")
    wave = torch.cat(chunks)
    if want is not None:
        wave = torch.nn.functional.pad(wave[:want], (0, max(want - len(wave), 0)))
    return wave


def check_length(wave: torch.Tensor, sample_rate: int, max_seconds: float | None, name: str = "audio") -> torch.Tensor:
    """`wave` (S,) itself, or AudioTooLongError when it holds more than `max_seconds` (None: no limit)."""
    if max_seconds is not None and len(wave) > max_seconds * sample_rate:
        raise too_long(name, len(wave) / sample_rate, max_seconds)
    return wave


def is_silent(wave: torch.Tensor, sample_rate: int = 16000, threshold_db: float = -50.0) -> bool:
    """True when no 20 ms frame of `wave` (S,) is louder than `threshold_db` dBFS (RMS): nothing was said.

    Example:
        >>> is_silent(torch.zeros(16000)), is_silent(1e-4 * torch.randn(16000)), is_silent(tone(440, 0.5))
        (True, True, False)
    """
    frame = max(sample_rate // 50, 1)
    x = wave.float().flatten()
    if len(x) == 0:
        return True
    x = torch.nn.functional.pad(x, (0, -len(x) % frame)).view(-1, frame)
    loudest = float(x.pow(2).mean(1).max().sqrt())
    return loudest < 10 ** (threshold_db / 20)


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
