"""Audio: mel filterbank, log-mel shapes, a known tone's peak, decoding wav with resampling and streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.data.audio import (
    MelConfig,
    iter_audio,
    load_audio,
    log_mel,
    mel_filterbank,
    mel_frequencies,
    tone,
    write_wav,
)
from polymodal.data.video import write_video
from polymodal.errors import DataError


def test_log_mel_shapes():
    cfg = MelConfig()
    assert log_mel(torch.zeros(16000), cfg).shape == (40, 16000 // 256 + 1)
    assert log_mel(torch.zeros(3, 8000), cfg).shape == (3, 40, 8000 // 256 + 1)
    silence = log_mel(torch.zeros(4000), cfg)
    assert torch.isfinite(silence).all() and torch.allclose(silence, torch.full_like(silence, np.log(cfg.floor)))
    bank = mel_filterbank(MelConfig(n_mels=64, n_fft=400))
    assert bank.shape == (64, 201) and (bank.sum(1) > 0).all()  # no empty filter


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_known_tone_peaks_in_its_mel_bin(freq):
    cfg = MelConfig()
    spec = log_mel(tone(freq, 1.0), cfg)
    peak = int(spec[:, 5:-5].mean(1).argmax())
    assert peak == int((mel_frequencies(cfg) - freq).abs().argmin())


def test_wav_round_trip_resamples_and_streams(tmp_path):
    wave = tone(1000.0, 2.0, sample_rate=8000)
    path = write_wav(tmp_path / "tone.wav", wave, 8000)
    same = load_audio(path, 8000)
    assert len(same) == len(wave) and torch.allclose(same, wave, atol=1e-3)
    up = load_audio(path, 16000)  # resampled to 16 kHz: twice the samples, the same pitch
    assert abs(len(up) - 2 * len(wave)) < 64
    cfg = MelConfig()
    assert int(log_mel(up, cfg).mean(1).argmax()) == int((mel_frequencies(cfg) - 1000).abs().argmin())
    assert load_audio(path, 16000, start=0.5, duration=1.0).shape == (16000,)
    chunks = list(iter_audio(path, 16000, chunk_seconds=0.25))  # streamed: many small chunks
    assert len(chunks) >= 6 and abs(sum(map(len, chunks)) - len(up)) < 64


def test_bad_audio_is_a_clear_error(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x00\x00 not really a wave file")
    with pytest.raises(DataError, match="noise.wav"):
        load_audio(bad)
    silent = write_video(tmp_path / "silent.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=4)
    with pytest.raises(DataError, match="no audio track"):
        load_audio(silent)
    with pytest.raises(DataError, match="not found"):
        load_audio(tmp_path / "missing.flac")
