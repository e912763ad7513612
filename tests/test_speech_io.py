"""Speech in and out: `polymodal vqa --audio/--speak`, `polymodal speak`, bad audio (silence, 30 minutes, not audio,
empty, truncated mp3, any rate / channels / sample width), and /v1/transcribe, /v1/vqa with audio, /v1/speak.

Every audio file is made here (numpy + the wave module + PyAV; speech by espeak-ng, skipped with the reason
when it is not installed); the models are the bundled ones.
"""

from __future__ import annotations

import base64
import io
import time
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import polymodal
from polymodal.assets import ASSETS, BUNDLED_ASR, BUNDLED_VQA
from polymodal.data import audio as audio_mod
from polymodal.data.audio import AudioTooLongError, is_silent, load_audio, tone
from polymodal.data.shapes import Scene, ShapeObject, render
from polymodal.data.speech import espeak_available
from polymodal.errors import DataError
from polymodal.serve import ServeConfig, create_app
from polymodal.serve.uploads import Limits

from .test_cli_matrix import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (`apt-get install "
                                  "espeak-ng` or `make speech`): no speech to recognize or to speak")
QUESTION = "what colour is the circle"


def write_pcm(path: Path, wave_: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    """A WAV of a mono float waveform at `rate`, copied to `channels`, `width` bytes per sample (1, 2 or 3)."""
    x = np.repeat(np.clip(wave_, -1, 1)[:, None], channels, axis=1)
    if width == 1:
        pcm = ((x * 127) + 128).astype(np.uint8).tobytes()
    else:
        ints = (x * (2 ** (8 * width - 1) - 1)).astype("<i4")
        pcm = ints.view(np.uint8).reshape(*ints.shape, 4)[..., :width].tobytes()  # little-endian low bytes
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def mp3_bytes(seconds: float = 2.0) -> bytes:
    buffer = io.BytesIO()
    samples = tone(440, seconds).numpy()
    with av.open(buffer, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=16000, layout="mono")
        for i in range(0, len(samples), 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, i:i + 1152], format="flt", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def scene_png(path: Path | None = None) -> bytes:
    image = render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), background=(40, 40, 40)), 64)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def recognizer():
    return polymodal.load(ASSETS / BUNDLED_ASR)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> Path:
    """QUESTION spoken by espeak-ng, 16 kHz mono 16-bit."""
    if not espeak_available():
        pytest.skip("espeak-ng not installed: no speech to recognize")
    from polymodal.data.speech import Voicing, synthesize

    folder = tmp_path_factory.mktemp("speech")
    return write_pcm(folder / "question.wav", synthesize(QUESTION, Voicing("en-us+m1", speed=160)), 16000)


# ----------------------------------------------------------------------------- bad audio, one place
def test_silence_transcribes_as_empty_not_words(recognizer, tmp_path):
    quiet = write_pcm(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    hiss = 1e-4 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)  # -80 dBFS
    assert recognizer.transcribe([quiet, torch.zeros(8000), hiss]) == ["", "", ""]


def test_a_30_minute_recording_is_refused_before_it_is_decoded(tmp_path):
    path = tmp_path / "meeting.wav"
    with wave.open(str(path), "wb") as w:  # 30 minutes of 8 kHz 8-bit silence: 14 MB
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128]) * (30 * 60 * 8000))
    start = time.perf_counter()
    with pytest.raises(AudioTooLongError) as info:
        load_audio(path, 16000, max_seconds=60)
    assert time.perf_counter() - start < 1.0  # decoding 30 minutes would take several seconds
    message = str(info.value)
    assert "\n" not in message and "meeting.wav" in message and "1800.0 s" in message and "60 s limit" in message


def test_length_without_a_header_is_checked_while_decoding(tmp_path, monkeypatch):
    path = write_pcm(tmp_path / "three.wav", tone(440, 3.0).numpy(), 16000)
    monkeypatch.setattr(audio_mod, "declared_seconds", lambda container, stream: None)  # a stream with no length
    with pytest.raises(AudioTooLongError, match="three.wav: the audio is longer than that"):
        load_audio(path, 16000, max_seconds=1.0)
    assert len(load_audio(path, 16000, max_seconds=5.0)) == 48000


@pytest.mark.parametrize("content, expected", [
    (b"", "empty file (0 bytes)"),
    (b"this is a text file, not a recording\n" * 20, "cannot open media"),
    (b"\x89PNG\r\n\x1a\n", "has no audio track"),  # an image named .wav
])
def test_not_audio_or_empty_is_one_line_naming_the_file(recognizer, tmp_path, content, expected):
    path = tmp_path / "question.wav"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        recognizer.transcribe([path])
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path)) and expected in str(info.value)


def test_truncated_mp3_decodes_what_is_there_or_is_one_line(tmp_path):
    data = mp3_bytes(2.0)
    half = tmp_path / "half.mp3"
    half.write_bytes(data[: len(data) // 2])
    assert 0.5 < len(load_audio(half, 16000)) / 16000 < 1.5  # the frames that are there
    stub = tmp_path / "stub.mp3"
    stub.write_bytes(data[:400])  # the ID3 header and little else
    with pytest.raises(DataError, match=r"stub.mp3: cannot open media .*truncated") as info:
        load_audio(stub, 16000)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("rate, channels, width", [(8000, 1, 2), (48000, 1, 2), (16000, 2, 2), (22050, 1, 3),
                                                   (48000, 2, 3)])
def test_any_rate_channels_and_width_are_resampled(tmp_path, rate, channels, width):
    path = write_pcm(tmp_path / "tone.wav", tone(1000, 1.0, rate).numpy(), rate, channels, width)
    x = load_audio(path, 16000)
    assert abs(len(x) - 16000) <= 64 and 0.4 < float(x.abs().max()) < 0.6  # same level, not doubled by stereo


@needs_espeak
@pytest.mark.parametrize("rate, channels, width", [(8000, 1, 2), (48000, 2, 3)])
def test_speech_at_other_rates_is_still_recognized(recognizer, spoken, tmp_path, rate, channels, width):
    path = write_pcm(tmp_path / "q.wav", load_audio(spoken, rate).numpy(), rate, channels, width)
    assert recognizer.transcribe([path]) == [QUESTION]


# ----------------------------------------------------------------------------- the CLI
@needs_espeak
def test_cli_vqa_spoken_question_and_spoken_reply(recognizer, spoken, tmp_path):
    image, reply = tmp_path / "scene.png", tmp_path / "reply.wav"
    scene_png(image)
    code, out, err = run_cli(["vqa", str(ASSETS / BUNDLED_VQA), str(image), "--audio", str(spoken),
                              "--speak", str(reply)])
    assert code == 0, err
    assert out.splitlines() == [f"heard: {QUESTION}", "red"]
    spoken_reply = load_audio(reply, 16000)  # one word: too short for the recognizer to hear back reliably
    assert 0.2 < len(spoken_reply) / 16000 < 2.0 and not is_silent(spoken_reply)


def test_cli_chat_hears_spoken_turns_with_voice(spoken, tmp_path):
    """--voice: a line naming an audio file is a spoken question (heard, then answered); a silent one is an
    error line and the conversation goes on; typed lines still work."""
    from .test_cli_matrix import _chat

    _chat().save_pretrained(tmp_path / "chat")
    image, silence = tmp_path / "scene.png", write_pcm(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    scene_png(image)
    code, out, err = run_cli(["chat", str(tmp_path / "chat"), str(image), "--voice"],
                             stdin=f"{spoken}\n{silence}\nwhat colour is it?\n")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"heard: {QUESTION}" and [line.startswith("assistant:") for line in lines[1:]] == [True, True]
    assert "silence.wav: no speech heard" in err


@needs_espeak
def test_cli_speak_writes_speech_and_transcribe_reads_it(tmp_path):
    out = tmp_path / "reply.wav"
    code, _, err = run_cli(["speak", "a large red circle", "--out", str(out)])
    assert code == 0, err
    code, text, err = run_cli(["transcribe", str(ASSETS / BUNDLED_ASR), str(out)])
    assert code == 0 and text.strip() == "a large red circle", err
    assert "warning" not in err  # like the training recordings: no out-of-distribution warning


def test_a_recording_unlike_the_training_audio_is_flagged(client, tmp_path):
    """A 440 Hz tone is no espeak-ng speech: the API says so beside the transcript, the CLI warns in one line."""
    tone = (0.3 * np.sin(np.arange(32000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    body = client.post("/v1/transcribe", files=upload(wav_bytes(tone))).json()
    assert body["in_distribution"] is False and body["ood_score"] > 0
    code, _, err = run_cli(["transcribe", str(ASSETS / BUNDLED_ASR), str(write_pcm(tmp_path / "tone.wav", tone, 16000))])
    warnings = err.strip().splitlines()
    assert code == 0 and len(warnings) == 1 and "unlike the recordings" in warnings[0], err


def test_cli_speech_errors_are_one_line_exit_2(tmp_path, monkeypatch):
    image = tmp_path / "scene.png"
    scene_png(image)
    silence = write_pcm(tmp_path / "silence.wav", np.zeros(8000, np.float32), 16000)
    fake = tmp_path / "fake.wav"
    fake.write_text("not audio")
    long = write_pcm(tmp_path / "long.wav", tone(440, 3.0).numpy(), 16000)
    vqa = ["vqa", str(ASSETS / BUNDLED_VQA), str(image)]
    cases = [(vqa + ["--audio", str(silence)], "no speech heard"),
             (vqa + ["--audio", str(fake)], "fake.wav: cannot open media"),
             (vqa + ["--audio", str(long), "--max-seconds", "1"], "long.wav: the audio is 3.0 s long"),
             (vqa + ["what colour is it", "--audio", str(silence)], "ask one question"),
             (vqa, "ask one question"),
             (["transcribe", str(ASSETS / BUNDLED_ASR), str(fake)], "fake.wav: cannot open media")]
    for argv, expected in cases:
        code, out, err = run_cli(argv)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and not out, (argv, err)
    code, out, _ = run_cli(["transcribe", str(ASSETS / BUNDLED_ASR), str(silence)])
    assert code == 0 and out == "\n"  # silence: an empty line, not invented words
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on PATH
    for argv in (["speak", "red", "--out", str(tmp_path / "r.wav")], vqa + ["what colour", "--speak", "r.wav"]):
        code, out, err = run_cli(argv)
        assert code == 2 and "espeak-ng not found" in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def client():
    models = {"shapes_vqa": polymodal.load(ASSETS / BUNDLED_VQA).eval(),
              "shapes_asr": polymodal.load(ASSETS / BUNDLED_ASR).eval()}
    config = ServeConfig(limits=Limits(max_bytes=2 * 2**20, max_audio_seconds=5.0))
    with TestClient(create_app(models, config=config)) as c:
        yield c


def upload(data: bytes, name: str = "question.wav", with_image: bool = False) -> dict:
    files = {"audio": (name, data, "audio/wav")}
    return {**files, "image": ("scene.png", scene_png(), "image/png")} if with_image else files


def wav_bytes(wave_: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(wave_, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_models_lists_the_recognizer(client):
    info = client.get("/v1/models").json()
    assert {m["name"]: m["tasks"] for m in info["models"]}["shapes_asr"] == ["transcribe"]
    assert info["limits"]["max_audio_seconds"] == 5.0


@needs_espeak
def test_transcribe_and_spoken_vqa(client, spoken):
    data = spoken.read_bytes()
    reply = client.post("/v1/transcribe", files=upload(data))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] == QUESTION and body["model"] == "shapes_asr" and 1.0 < body["duration_s"] < 3.0
    assert body["elapsed_ms"] > 0 and body["in_distribution"] is True  # espeak-ng speech, as in training
    as_json = client.post("/v1/transcribe", json={"audio": base64.b64encode(data).decode(), "beam_size": 1})
    assert as_json.status_code == 200 and as_json.json()["text"] == QUESTION
    answer = client.post("/v1/vqa", files=upload(data, with_image=True), data={"k": "2"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["question"] == result["transcript"]["text"] == QUESTION
    assert result["answers"][0]["answer"] == "red" and len(result["answers"]) == 2


def test_silence_transcribes_empty_and_is_no_question(client):
    silence = wav_bytes(np.zeros(16000, np.float32))
    assert client.post("/v1/transcribe", files=upload(silence)).json()["text"] == ""
    reply = client.post("/v1/vqa", files=upload(silence, with_image=True))
    assert reply.status_code == 422 and "no speech heard" in reply.json()["error"]


@pytest.mark.parametrize("make, status, expected", [
    (lambda: wav_bytes(tone(440, 6.0).numpy()), 413, "6.0 s long, over the 5 s limit"),
    (lambda: b"RIFF" + b"\x00" * (3 * 2**20), 413, "over the 2.0 MB limit"),
    (lambda: scene_png(), 415, "not audio (a PNG image)"),
    (lambda: b"<html><body>hello</body></html>", 415, "not audio (HTML or XML text)"),
    (lambda: b"", 400, "empty upload"),
    (lambda: wav_bytes(np.zeros(0, np.float32)), 422, "no samples"),
    (lambda: mp3_bytes()[:400], 422, "cannot open media"),
])
def test_bad_audio_uploads_get_4xx(client, make, status, expected):
    reply = client.post("/v1/transcribe", files=upload(make()))
    assert reply.status_code == status and expected in reply.json()["error"], reply.text


def test_bad_fields_get_422_or_404(client):
    wav = wav_bytes(tone(440, 0.5).numpy())
    both = client.post("/v1/vqa", files=upload(wav, with_image=True), data={"question": "what colour"})
    assert both.status_code == 422 and "ask one question" in both.json()["error"]
    neither = client.post("/v1/vqa", files={"image": ("scene.png", scene_png(), "image/png")})
    assert neither.status_code == 422
    assert client.post("/v1/transcribe", files={"audio": (None, "text")}).status_code == 422  # not a file part
    assert client.post("/v1/transcribe", json={"beam_size": 2}).status_code == 422  # no audio
    assert client.post("/v1/transcribe", json={"audio": "%%%"}).status_code == 422  # not base64
    assert client.post("/v1/transcribe", files=upload(wav), data={"model": "shapes_vqa"}).status_code == 400
    missing = client.post("/v1/transcribe", files=upload(wav), data={"model": "nope"})
    assert missing.status_code == 404


def test_no_recognizer_loaded_is_404():
    with TestClient(create_app({"shapes_vqa": polymodal.load(ASSETS / BUNDLED_VQA).eval()})) as c:
        reply = c.post("/v1/vqa", files=upload(wav_bytes(tone(440, 0.5).numpy()), with_image=True))
    assert reply.status_code == 404 and "speech recognizer" in reply.json()["error"]


@needs_espeak
def test_speak_returns_wav(client, recognizer):
    reply = client.post("/v1/speak", json={"text": "a small blue square", "voice": "en-gb+f2"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav"
    assert recognizer.transcribe([reply.content]) == ["a small blue square"]
    assert client.post("/v1/speak", json={"text": "red", "voice": "--help"}).status_code == 422
    assert client.post("/v1/speak", json={"text": ""}).status_code == 422


def test_speak_without_espeak_is_503(client, monkeypatch):
    from polymodal.serve import speech_routes

    monkeypatch.setattr(speech_routes, "espeak_available", lambda: False)
    reply = client.post("/v1/speak", json={"text": "red"})
    assert reply.status_code == 503 and "espeak-ng" in reply.json()["error"]
