"""Video: mp4 round trip with sound, frame samplers, truncated files, key frames at a hard cut,
Shapes World video, and tiny video models that learn, save, load and describe."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig
from polymodal.data.audio import MelConfig, load_audio, log_mel, mel_frequencies, tone
from polymodal.data.clips import ClipCaptionDataset, ClipQADataset, read_annotations
from polymodal.data.shapes_video import (
    FRAMES,
    PITCH_HZ,
    SAMPLE_RATE,
    Event,
    event_sound,
    sample_clip,
)
from polymodal.data.video import probe, read_frames, write_video
from polymodal.errors import DataError
from polymodal.eval.keyframes import extract_keyframes, hit_rate
from polymodal.models.video_captioner import VideoCaptioner, VideoCaptionerConfig
from polymodal.models.video_qa import VideoQA, VideoQAConfig
from polymodal.nn.fusion.base import FusionConfig
from polymodal.nn.media import MediaConfig
from polymodal.text.tokenizer import WordTokenizer

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _colour_clip(n: int = 16, cut: int = 8) -> np.ndarray:
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[:cut, :, :, 0] = 220  # red, then blue from frame `cut`
    frames[cut:, :, :, 2] = 220
    frames[:, 8:12, :, 1] = np.arange(n, dtype=np.uint8)[:, None, None] * 3  # a little motion everywhere
    return frames


def test_mp4_round_trip_with_audio(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _colour_clip(), fps=8, audio=tone(880.0, 2.0).numpy(),
                       sample_rate=16000)
    info = probe(path)
    assert info.has_audio and info.duration == pytest.approx(2.0, abs=0.15) and info.fps == 8
    clip = read_frames(path, n=8, size=32)
    assert clip.frames.shape == (8, 3, 32, 32) and clip.frames.dtype == torch.uint8
    assert clip.times == pytest.approx([0.125 + 0.25 * i for i in range(8)], abs=0.07)
    red, blue = clip.frames[:, 0, 20:, :].float().mean((1, 2)), clip.frames[:, 2, 20:, :].float().mean((1, 2))
    assert (red[:4] > 180).all() and (blue[4:] > 180).all() and (red[4:] < 40).all()
    wave = load_audio(path, 16000, duration=info.duration)
    cfg = MelConfig()
    assert len(wave) == int(info.duration * 16000)
    assert int(log_mel(wave, cfg)[:, 10:-10].mean(1).argmax()) == int((mel_frequencies(cfg) - 880).abs().argmin())
    assert len(read_frames(path, n=100, sampling="fps", fps=4).times) == 8
    assert read_frames(path, n=5, sampling="keyframes").times[0] == 0.0


def test_truncated_and_bad_mp4_give_a_clear_error(tmp_path):
    path = write_video(tmp_path / "clip.mp4", _colour_clip(), fps=8, audio=tone(440.0, 2.0).numpy())
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    for read in (lambda p: read_frames(p, 4), lambda p: load_audio(p), probe):
        with pytest.raises(DataError, match="cut.mp4.*truncated"):
            read(cut)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="junk.mp4"):
        read_frames(junk)


def test_keyframes_find_a_hard_cut(tmp_path):
    path = write_video(tmp_path / "cut.mp4", _colour_clip(24, cut=13), fps=8)
    frames = extract_keyframes(path, k=1, size=32)
    assert len(frames) == 1 and frames[0].index == 13 and frames[0].time == pytest.approx(13 / 8)
    assert frames[0].image.shape == (32, 32, 3) and frames[0].image[..., 2].mean() > 180
    assert hit_rate([f.time for f in frames], [13 / 8], tolerance=0.01) == 1.0


def test_shapes_video_clip_is_seeded_and_consistent():
    a, b = sample_clip(random.Random(3)), sample_clip(random.Random(3))
    assert a.caption() == b.caption() and np.array_equal(a.frames(32), b.frames(32))
    assert a.frames(32).shape == (FRAMES, 32, 32, 3)
    captions = [sample_clip(random.Random(i)) for i in range(30)]
    heard = [c for c in captions if any(e.kind == "heard" for e in c.events)]
    assert 5 < len(heard) < 25
    clip = heard[0]
    qa = {q["type"]: q for q in clip.questions(random.Random(0))}
    event = next(e for e in clip.events if e.kind == "heard")
    assert qa["offscreen_shape"]["answer"] == event.shape and qa["offscreen_shape"]["audio_only"]
    assert "heard off screen" in clip.caption() and clip.summary().split()[0] in ("three", "four")
    # the off-screen sound is in the soundtrack at its time, at its shape's pitch
    sound = clip.soundtrack()
    start = int(event.time * SAMPLE_RATE)
    window = torch.from_numpy(sound[start + 800: start + 4800].copy())
    cfg = MelConfig()
    peak = mel_frequencies(cfg)[int(log_mel(window, cfg).mean(1).argmax())]
    assert abs(float(peak) / PITCH_HZ[event.shape] - 1) < 0.15
    click = event_sound(Event("collides", "circle", "red", 0), np.random.default_rng(0))
    assert len(click) < 0.05 * SAMPLE_RATE


def _media() -> MediaConfig:
    return MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=8, grid=2, dim=32, frame_diff=True,
                       audio_width=4, audio_tokens=8, heads=2)


def _overfit(model, batch, steps: int = 25) -> tuple[float, float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(steps):
        _, losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["loss"].detach()) if first is None else first
    return first, float(losses["loss"].detach())


def test_video_captioner_learns_saves_and_describes(tiny_video_world, tmp_path):
    folder, clips, bank = tiny_video_world
    tok = WordTokenizer.build([c["caption"] for c in clips] + [c["summary"] for c in clips])
    torch.manual_seed(0)
    cfg = VideoCaptionerConfig(media=_media(), decoder=DecoderConfig(embed_dim=16, hidden_dim=32, attention_dim=16,
                                                                     dropout=0.0, max_len=40))
    model = VideoCaptioner(cfg, tok)
    data = ClipCaptionDataset(clips[:4], bank, tok, 40)
    batch = data.collate([data[i] for i in range(len(data))])
    assert batch["frames"].shape == (8, 8, 3, 32, 32) and batch["event_targets"].sum() >= 8
    first, last = _overfit(model, batch)
    assert last < 0.7 * first
    model.save_pretrained(tmp_path / "vc")
    import polymodal

    loaded = polymodal.load(tmp_path / "vc")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch)[0], loaded(batch)[0], atol=1e-5)
    out = loaded.describe(folder / clips[0]["video"], beam_size=1)
    assert set(out) >= {"summary", "caption", "events"} and len(out["event_probs"]) == 8
    assert all(0 <= e["time"] <= 4 for e in out["events"])


@pytest.mark.parametrize("fusion", ["cross_attention", "vote_learned"])
def test_video_qa_learns_with_feature_and_decision_fusion(tiny_video_world, fusion):
    _, clips, bank = tiny_video_world
    questions = [q for c in clips for q in c["questions"]]
    tok = WordTokenizer.build(q["question"] for q in questions)
    answers = sorted({q["answer"] for q in questions})
    torch.manual_seed(0)
    cfg = VideoQAConfig(media=_media(), fusion=FusionConfig(name=fusion, dim=32, hidden=32, heads=2, query="text"))
    model = VideoQA(cfg, tok, answers)
    data = ClipQADataset(clips[:3], bank, tok, answers, 12)
    batch = data.collate([data[i] for i in range(len(data))])
    first, last = _overfit(model, batch, steps=30)
    assert last < 0.6 * first
    assert isinstance(model.answer(tiny_video_world[0] / clips[0]["video"], "what shape is heard off screen?"), str)


def test_video_qa_with_missing_token_answers_from_each_modality_alone(tiny_video_world):
    from polymodal.train.video import evaluate_video_qa

    _, clips, bank = tiny_video_world
    questions = [q for c in clips for q in c["questions"]]
    tok = WordTokenizer.build(q["question"] for q in questions)
    answers = sorted({q["answer"] for q in questions})
    torch.manual_seed(0)
    media = dataclasses.replace(_media(), missing_token=True)
    model = VideoQA(VideoQAConfig(media=media, modality_dropout=0.5,
                                  fusion=FusionConfig(dim=32, hidden=32, heads=2, query="text")), tok, answers)
    data = ClipQADataset(clips[:3], bank, tok, answers, 12)
    first, last = _overfit(model, data.collate([data[i] for i in range(len(data))]), steps=30)
    assert last < 0.8 * first
    for inputs in (("video",), ("audio",), None):
        scores = evaluate_video_qa(model, data, inputs=inputs)
        assert scores["questions"] == len(data) and 0.0 <= scores["accuracy"] <= 1.0
    model.eval()
    batch = data.collate([data[0]])
    with torch.no_grad():  # a missing modality is the learned token, not the clip's own input
        silent = model({k: v for k, v in batch.items() if k != "mel"})[0]
        assert not torch.allclose(silent, model(batch)[0])



def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    code, _, err = polymodal_cli(monkeypatch, capsys, *args)
    return code, err


def test_cli_shapes_video_keyframes_and_describe_errors(tmp_path, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, "data", "shapes-video", "--out", str(tmp_path / "sv"), "--n", "3",
                     "--size", "32", "--quiet")
    assert code == 0, err
    clips = read_annotations(tmp_path / "sv")
    assert len(clips) == 3 and (tmp_path / "sv" / clips[0]["video"]).is_file()
    video = tmp_path / "sv" / clips[0]["video"]
    code, err = _cli(monkeypatch, capsys, "keyframes", str(video), "-k", "3", "--out", str(tmp_path / "kf"))
    assert code == 0, err
    assert (tmp_path / "kf" / "contact_sheet.png").is_file() and len(list((tmp_path / "kf").glob("keyframe_*.png"))) == 3
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:2000])
    code, err = _cli(monkeypatch, capsys, "keyframes", str(cut), "--out", str(tmp_path / "kf2"))
    assert code == 2 and err.count("\n") == 1 and "cut.mp4" in err and "truncated" in err
    code, err = _cli(monkeypatch, capsys, "describe", str(video), "--model", str(tmp_path / "no_model"))
    assert code == 2 and err.startswith("error: ") and "no_model" in err
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "still.png")
    code, err = _cli(monkeypatch, capsys, "describe", str(tmp_path / "still.png"))  # an image, not a video
    assert code == 2 and err.count("\n") == 1 and "still.png" in err and "takes a video file" in err
    assert "`polymodal caption" in err and "audio" not in err


def test_modality_dropout_only_in_training():
    tok = WordTokenizer.build(["a red circle appears"])
    model = VideoCaptioner(VideoCaptionerConfig(media=_media(), modality_dropout=0.5), tok)
    keep = model.train().media.modality_mask(200, torch.device("cpu"), 0.5)
    assert 50 < int((keep == 0).sum()) < 150 and bool((keep.sum(1) >= 1).all())  # never both dropped
    assert bool((model.eval().media.modality_mask(200, torch.device("cpu"), 0.5) == 1).all())


def test_one_checkpoint_describes_video_with_sound_silent_video_and_sound_alone(tiny_video_world, tmp_path, monkeypatch,
                                                                                  capsys):
    """A missing-token model with space-time region tokens: every input kind works from one saved checkpoint,
    the result names what it read, and the CLI takes a wav."""
    folder, clips, bank = tiny_video_world
    tok = WordTokenizer.build([c["caption"] for c in clips] + [c["summary"] for c in clips])
    torch.manual_seed(0)
    media = _media()
    media.temporal, media.missing_token = "space_time", True
    cfg = VideoCaptionerConfig(media=media, modality_dropout=0.5,
                               decoder=DecoderConfig(embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0,
                                                     max_len=40))
    model = VideoCaptioner(cfg, tok)
    data = ClipCaptionDataset(clips[:4], bank, tok, 40)
    batch = data.collate([data[i] for i in range(len(data))])
    first, last = _overfit(model, batch)
    assert last < 0.8 * first
    model.eval()
    with torch.no_grad():  # a lacking modality is the learned missing token, not whatever the batch held
        silent = {k: v for k, v in batch.items() if k != "mel"}
        assert torch.equal(model.media(silent)["audio"][0, 0], model.media.missing[1])
        assert not torch.allclose(model(silent)[0], model(batch)[0])
    model.save_pretrained(tmp_path / "vc")
    import polymodal
    from polymodal.data.audio import write_wav

    loaded = polymodal.load(tmp_path / "vc")
    sound = load_audio(folder / clips[0]["video"], 16000)
    frames = np.stack([f.permute(1, 2, 0).numpy() for f in read_frames(folder / clips[0]["video"], 16, 32).frames])
    inputs = {"video + audio": (folder / clips[0]["video"], ["video", "audio"]),
              "silent": (write_video(tmp_path / "silent.mp4", frames, fps=4), ["video"]),
              "wav": (write_wav(tmp_path / "sound.wav", sound, 16000), ["audio"])}
    for name, (path, used) in inputs.items():
        out = loaded.describe(path, beam_size=1)
        assert out["modalities"] == used, name
        assert isinstance(out["caption"], str) and len(out["event_probs"]) == 8, name
    code, err = _cli(monkeypatch, capsys, "describe", str(tmp_path / "sound.wav"), "--model", str(tmp_path / "vc"))
    assert code == 0, err
