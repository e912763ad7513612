"""Odd and bad media (issue 23, "Bad input"): zero-frame and too-long video, long video read by seeking,
variable frame rate, phone rotation, 1 x 1 frames, and audio at any sample rate or with no samples.

Every file is written here with PyAV, tiny, into tmp_path; decoding is counted through a hook on
`polymodal.data.video._decode`, never timed.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from polymodal.data import video as video_mod
from polymodal.data.audio import MelConfig, load_audio, log_mel, mel_frequencies, tone
from polymodal.data.video import probe, read_frames
from polymodal.errors import DataError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def write(path: Path, frames: np.ndarray, times: list[float] | None = None, rate: Fraction | int = 8,
          gop: int = 8, rotation: int = 0, pix_fmt: str = "yuv420p", audio_seconds: float = 0.0) -> Path:
    """Frames (T, H, W, 3) as H.264 with explicit timestamps `times` (seconds; default: T / rate) and a
    key frame every `gop` frames; `rotation` (counterclockwise degrees) goes in the display matrix."""
    times = times if times is not None else [i / Fraction(rate) for i in range(len(frames))]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "10", "preset": "ultrafast", "g": str(gop), "bf": "0"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio_seconds else None
        out.start_encoding()
        for img, t in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            for i in range(0, int(audio_seconds * 16000), 1024):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, i
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def greys(values: list[int], side: int = 16) -> np.ndarray:
    """One flat grey frame per value: which frame was decoded can be read back from its pixels."""
    return np.repeat(np.asarray(values, np.uint8)[:, None, None, None], side * side * 3).reshape(len(values), side,
                                                                                                   side, 3)


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """Counts every frame `read_frames` decodes (one entry per frame)."""
    seen: list[int] = []
    real = video_mod._decode

    def counting(container, stream, path):
        for frame in real(container, stream, path):
            seen.append(1)
            yield frame

    monkeypatch.setattr(video_mod, "_decode", counting)
    return seen


# ----------------------------------------------------------------------------- zero frames
def test_zero_frame_videos_are_one_clear_line(tmp_path):
    with av.open(str(tmp_path / "audio_only.mp4"), "w") as out:  # an mp4 holding only sound
        sound = out.add_stream("aac", rate=16000, layout="mono")
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 16000, 0
        out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    # a video track and no frame in it (mp4 drops an empty track, mkv keeps it)
    no_frames = write(tmp_path / "no_frames.mkv", greys([]), audio_seconds=0.5)
    cases = [(tmp_path / "audio_only.mp4", "no video track"), (no_frames, "frame could be decoded")]
    for path, why in cases:
        for sampling in ("uniform", "fps", "keyframes"):
            with pytest.raises(DataError) as info:
                read_frames(path, n=4, sampling=sampling, fps=2)
            message = str(info.value)
            assert "\n" not in message and message.startswith(str(path)) and why in message, message
    with pytest.raises(InputError, match="at least 1"):
        read_frames(no_frames, n=0)


def test_cli_keyframes_on_a_zero_frame_video_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from polymodal.cli import main

    path = write(tmp_path / "no_frames.mkv", greys([]), audio_seconds=0.5)
    monkeypatch.setattr("sys.argv", ["polymodal", "keyframes", str(path), "--out", str(tmp_path / "kf")])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "no_frames.mkv" in err
    assert "Traceback" not in err and "no video frame" in err


# ----------------------------------------------------------------------------- long video
def test_long_video_is_sampled_by_seeking_not_decoded_whole(tmp_path, decoded):
    # 10 minutes at 1 fps, 16 x 16, a key frame every 10 s; frame i has grey level i % 250
    values = [i % 250 for i in range(600)]
    path = write(tmp_path / "long.mp4", greys(values), rate=1, gop=10)
    assert probe(path).duration == pytest.approx(600, abs=1.5)
    clip = read_frames(path, n=8, size=16)
    assert len(decoded) <= 8 * 11, f"decoded {len(decoded)} of 600 frames for 8 samples"
    targets = [(i + 0.5) * probe(path).duration / 8 for i in range(8)]
    assert clip.times == pytest.approx(targets, abs=0.51)
    assert clip.frames[:, 0].float().mean((1, 2)).tolist() == pytest.approx([values[round(t)] for t in clip.times],
                                                                             abs=3)
    decoded.clear()
    assert len(read_frames(path, n=10, sampling="fps", fps=1 / 60).times) == 10 and len(decoded) <= 10 * 11


def test_two_hour_video_is_sampled_and_the_length_limit_says_how_to_cut(tmp_path, decoded, monkeypatch):
    # two hours at one frame a minute: the length is real, the file is 120 tiny frames
    path = write(tmp_path / "film.mp4", greys([i * 2 for i in range(120)]), rate=Fraction(1, 60), gop=12)
    assert probe(path).duration == pytest.approx(7200, abs=61) and video_mod.MAX_SECONDS >= 7200
    clip = read_frames(path, n=4, size=16)
    assert clip.frames.shape == (4, 3, 16, 16) and len(decoded) < 60
    assert clip.times == pytest.approx([900, 2700, 4500, 6300], abs=31)
    monkeypatch.setattr(video_mod, "MAX_SECONDS", 3600.0)
    for sampling in ("uniform", "fps", "keyframes"):
        with pytest.raises(DataError) as info:
            read_frames(path, n=4, sampling=sampling, fps=1)
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(path)), message
        assert "MAX_SECONDS" in message and "60-minute limit" in message and "-t 3600" in message, message


# ----------------------------------------------------------------------------- variable frame rate
def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    # 10 frames in the first second, then one frame a second up to 9 s: frame i has grey level 13 * i + 10
    times = [i / 10 for i in range(10)] + [float(s) for s in range(1, 10)]
    values = [13 * i + 10 for i in range(len(times))]
    path = write(tmp_path / "vfr.mp4", greys(values), times=times, rate=10, gop=4)
    duration = probe(path).duration
    assert 9.0 <= duration <= 10.1
    clip = read_frames(path, n=4, size=16)
    targets = [(i + 0.5) * duration / 4 for i in range(4)]
    nearest = [min(times, key=lambda t, g=g: abs(t - g)) for g in targets]
    assert clip.times == pytest.approx(nearest, abs=1e-3)
    assert max(clip.times) > 7 and min(clip.times) >= 1  # by frame index, 3 of 4 would fall in the first second
    grey = clip.frames[:, 0].float().mean((1, 2)).tolist()
    assert grey == pytest.approx([values[times.index(t)] for t in nearest], abs=4)


# ----------------------------------------------------------------------------- rotation and tiny frames
@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_phone_video_comes_out_upright(tmp_path, rotation):
    stored = np.zeros((4, 16, 32, 3), np.uint8)  # stored landscape 32 x 16, a white top-left quarter
    stored[:, :8, :16] = 255
    path = write(tmp_path / "phone.mp4", stored, rate=4, rotation=rotation)
    upright = np.rot90(stored[0], rotation // 90)  # the display matrix turns the picture counterclockwise
    clip = read_frames(path, n=2, size=None)
    assert tuple(clip.frames.shape[2:]) == upright.shape[:2]
    got = clip.frames[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - upright).mean() < 8
    square = read_frames(path, n=1, size=16).frames[0, 0].numpy() > 128  # resized to 16 x 16: still turned
    corner = np.zeros((16, 16), bool)
    corner[:8, :8] = True  # the white quarter of the squashed stored frame
    assert (square == np.rot90(corner, rotation // 90)).mean() > 0.9


def test_one_pixel_video_is_resized_to_the_model_size(tmp_path):
    path = write(tmp_path / "dot.mp4", np.full((6, 1, 1, 3), 200, np.uint8), rate=6, pix_fmt="yuv444p")
    info = probe(path)
    assert (info.width, info.height) == (1, 1)
    for sampling in ("uniform", "fps", "keyframes"):
        clip = read_frames(path, n=3, size=32, sampling=sampling, fps=6)
        assert clip.frames.shape[1:] == (3, 32, 32) and abs(clip.frames.float().mean() - 200) < 6
    assert read_frames(path, n=2, size=None).frames.shape == (2, 3, 1, 1)


# ----------------------------------------------------------------------------- audio
def _wav(path: Path, rate: int, channels: int, seconds: float, freq: float = 1000.0) -> Path:
    mono = tone(freq, seconds, rate).numpy()
    pcm = (np.repeat(mono[:, None], channels, axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 1), (44100, 2), (48000, 2)])
def test_audio_at_any_rate_is_resampled_to_the_model_rate(tmp_path, rate, channels):
    path = _wav(tmp_path / f"a{rate}.wav", rate, channels, 1.0)
    wave_ = load_audio(path, 16000)
    assert abs(len(wave_) - 16000) <= 64 and torch.isfinite(wave_).all()
    assert 0.3 < float(wave_.abs().max()) < 0.7  # stereo is averaged, not summed
    cfg = MelConfig()
    peak = int(log_mel(wave_, cfg)[:, 5:-5].mean(1).argmax())
    assert peak == int((mel_frequencies(cfg) - 1000).abs().argmin())


def test_wav_with_zero_samples_is_one_clear_line(tmp_path):
    path = _wav(tmp_path / "empty.wav", 44100, 2, 0.0)
    with pytest.raises(DataError) as info:
        load_audio(path, 16000)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and "empty" in message
