"""Out-of-distribution checks for video models: one statistic per modality, saved with the model, so that
a video with sound, a silent video and a sound file are each checked against what they have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polymodal
from polymodal.config import DecoderConfig, EncoderConfig
from polymodal.data.audio import MelConfig
from polymodal.data.clips import ClipBank, read_annotations
from polymodal.data.shapes_video import write_shapes_video
from polymodal.data.video import write_video
from polymodal.eval.ood import check_clip, fit_clip_stats, stats_path
from polymodal.models.video_captioner import VideoCaptioner, VideoCaptionerConfig, load_clip
from polymodal.nn.media import MediaConfig
from polymodal.text.tokenizer import WordTokenizer

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vood")
    folder = write_shapes_video(root / "world", n=24, size=32, progress=False)
    clips = read_annotations(folder)
    bank = ClipBank.build(clips, folder, frames=8, size=32, mel=MelConfig(), encode=None, progress=False)
    tok = WordTokenizer.build([c["caption"] for c in clips] + [c["summary"] for c in clips])
    media = MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=8, grid=2, dim=16,
                        frame_diff=True, audio_width=4, audio_tokens=8, heads=2, missing_token=True)
    torch.manual_seed(0)
    model = VideoCaptioner(VideoCaptionerConfig(media=media, decoder=DecoderConfig(
        embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0, max_len=40)), tok).eval()
    model.save_pretrained(root / "plain")  # saved without statistics
    rows = list(range(len(clips)))
    stats = fit_clip_stats(model, [bank.inputs(rows[:16])], [bank.inputs(rows[16:])], quantile=0.9)
    model.save_pretrained(root / "model")
    for name, s in stats.items():
        s.save(root / "model", name)
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    loud = np.random.default_rng(1).uniform(-1, 1, 32000).astype(np.float32)
    write_video(root / "noise.mp4", noise, fps=8, audio=loud, sample_rate=16000)
    return root, folder, clips, stats


def test_stats_per_modality_are_saved_and_loaded(saved):
    root, _, _, stats = saved
    assert set(stats) == {"video", "audio"}
    assert stats_path(root / "model", "audio").is_file() and stats_path(root / "model", "video").is_file()
    loaded = polymodal.load(root / "model")
    assert set(loaded.ood_stats_by_input) == {"video", "audio"}
    assert polymodal.load(root / "plain").ood_stats_by_input == {}


def _check(model, path):
    return check_clip(model, load_clip(path, model.cfg.media))


def test_clips_are_checked_against_the_training_clips(saved):
    root, folder, clips, _ = saved
    model = polymodal.load(root / "model")
    seen = _check(model, folder / clips[0]["video"])  # a training clip
    assert seen["in_distribution"] is True and set(seen["by_modality"]) == {"video", "audio"}
    noise = _check(model, root / "noise.mp4")
    assert noise["in_distribution"] is False and noise["ood_score"] > 1.0
    assert _check(polymodal.load(root / "plain"), root / "noise.mp4") is None


def test_silent_video_is_checked_on_its_frames_only(saved, tmp_path):
    root, folder, clips, _ = saved
    from polymodal.data.video import read_frames

    frames = read_frames(folder / clips[0]["video"], 32, 32).frames.permute(0, 2, 3, 1).numpy()
    write_video(tmp_path / "silent.mp4", frames, fps=8)
    check = _check(polymodal.load(root / "model"), tmp_path / "silent.mp4")
    assert set(check["by_modality"]) == {"video"} and check["in_distribution"] is True


def test_cli_warns_on_an_unlike_clip_and_notes_missing_statistics(saved, monkeypatch, capsys):
    root, *_ = saved
    code, _, err = polymodal_cli(monkeypatch, capsys, "describe", str(root / "noise.mp4"), "--model",
                                 str(root / "model"), "--beam", "1")
    assert code == 0 and "warning:" in err and "unlike the clips" in err
    code, _, err = polymodal_cli(monkeypatch, capsys, "describe", str(root / "noise.mp4"), "--model",
                                 str(root / "plain"), "--beam", "1")
    assert code == 0 and "no out-of-distribution statistics" in err


def test_too_few_clips_skip_the_statistics_instead_of_failing_the_run(saved, tmp_path, capsys):
    from polymodal.train.video import save_clip_stats

    root, folder, clips, _ = saved
    model = polymodal.load(root / "plain")
    bank = ClipBank.build(clips, folder, frames=8, size=32, mel=MelConfig(), encode=None, progress=False)
    assert save_clip_stats(model, tmp_path, bank, clips[:1], clips[1:2]) == {}  # one training clip: no covariance
    assert "out-of-distribution statistics: skipped" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    thresholds = save_clip_stats(model, tmp_path, bank, clips[:16], clips[16:])
    assert set(thresholds) == {"video", "audio"} and stats_path(tmp_path, "video").is_file()
