"""Video QA explanations: occlusion in time finds the frame or sound window a score depends on, the model's frames
are encoded once without changing a score, a clip without sound has no sound scores, and `polymodal explain` on a
video QA model writes its files or says in one line what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from polymodal.config import EncoderConfig
from polymodal.eval.explain_video import (
    ClipInput,
    clip_input,
    deletion_changes_clip,
    explain_clip,
    frame_occlusion,
    sound_occlusion,
)

from .test_cli_matrix import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = "what shape is heard off screen?"


def test_a_score_on_one_frame_puts_that_frame_first():
    frames = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = frames[4] - frames.mean(0)  # the score reads frame 4: occluding it (the mean frame) drops it most

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (batch["frames"][:, 4] * weight).sum((1, 2, 3))

    drops = frame_occlusion(score, ClipInput.of({"frames": frames, "mel": torch.randn(40, 50)}))
    assert drops.shape == (6,) and int(drops.argmax()) == 4 and drops[4] > 0
    assert torch.allclose(drops[[0, 1, 2, 3, 5]], torch.zeros(5))


def test_a_score_on_one_sound_window_puts_that_window_first():
    mel = torch.randn(40, 100, generator=torch.Generator().manual_seed(0))

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["mel"][:, :, 39:49].mean((1, 2))  # inside window 3 of 8: columns 37-50

    drops, spans = sound_occlusion(score, ClipInput.of({"mel": mel}), windows=8)
    assert len(spans) == 8 and spans[3] == (37, 50) and spans[-1][1] == 100
    assert int(drops.argmax()) == 3 and drops[3] > 0 and torch.allclose(drops[[0, 1, 2, 4, 5, 6, 7]], torch.zeros(7))


# ----------------------------------------------------------------------------- a tiny untrained VideoQA
def _model(modalities=("video", "audio")):
    from polymodal.models.video_qa import VideoQA, VideoQAConfig
    from polymodal.nn.fusion.base import FusionConfig
    from polymodal.nn.media import MediaConfig
    from polymodal.text.tokenizer import WordTokenizer

    torch.manual_seed(0)
    media = MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), modalities=list(modalities), image_size=32,
                        frames=4, grid=2, dim=16, audio_width=4, audio_tokens=4, heads=2)
    cfg = VideoQAConfig(media=media, fusion=FusionConfig(name="cross_attention", dim=16, hidden=16, heads=2,
                                                         query="text"))
    return VideoQA(cfg, WordTokenizer.build([QUESTION, "what shape enters?"]), ["star", "circle", "nothing"]).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-second clip with sound, the same clip silent, and a still image."""
    from PIL import Image

    from polymodal.data.audio import tone
    from polymodal.data.video import write_video

    root = tmp_path_factory.mktemp("clips")
    frames = np.zeros((16, 32, 32, 3), np.uint8)
    frames[8:, 8:24, 8:24] = (200, 40, 40)  # a red square appears half-way
    sound = tone(440.0, 2.0).numpy()
    sound[: len(sound) // 2] = 0.0  # heard in the second second only
    Image.new("RGB", (32, 32)).save(root / "still.png")
    return {"clip": write_video(root / "clip.mp4", frames, fps=8, audio=sound, sample_rate=16000),
            "silent": write_video(root / "silent.mp4", frames, fps=8), "image": root / "still.png", "root": root}


def test_a_clip_answer_is_explained_by_frames_sound_and_words(files):
    from polymodal.models.video_captioner import load_clip

    model = _model()
    clip = load_clip(files["clip"], model.cfg.media)
    why = explain_clip(model, clip, QUESTION, windows=8)
    assert why.output == model.answer_clip(clip, QUESTION)  # the model's own answer on the intact clip
    assert len(why.frames) == len(why.frame_times) == 4 and why.frame_times == clip["times"].tolist()
    assert len(why.sound) == len(why.windows) == 8 and why.windows[0][0] == 0.0 and 1.9 < why.windows[-1][1] < 2.1
    assert [w for w, _ in why.words] == QUESTION.rstrip("?").split()
    assert why.top_frames(2) == sorted(range(4), key=lambda i: -why.frames[i])[:2]
    data = why.to_dict()
    assert json.loads(json.dumps(data)) == data and data["kind"] == "video_qa" and len(data["sound"]) == 8
    assert len(deletion_changes_clip(model, clip, QUESTION, why.top_windows(8), (1, 2, 8), part="sound")) == 3
    everything = deletion_changes_clip(model, clip, QUESTION, [], (0,), part="frames")
    assert everything == [False]  # nothing occluded: the same answer


def test_frames_encoded_once_score_as_the_pixels_do(files):
    """`clip_input` swaps an occluded frame's features for the mean frame's: the same as encoding the occluded pixels."""
    from polymodal.eval.explain_video import _answer_score
    from polymodal.models.video_captioner import load_clip

    model = _model()
    clip = load_clip(files["clip"], model.cfg.media)
    score = _answer_score(model, 0, QUESTION)
    with torch.no_grad():
        encoded = frame_occlusion(score, clip_input(model, clip))
        pixels = frame_occlusion(score, ClipInput.of(clip))
    assert encoded.abs().sum() > 0 and torch.allclose(encoded, pixels, atol=1e-4)


def test_a_silent_clip_has_no_sound_scores_and_a_sound_file_no_frames(files):
    from polymodal.data.audio import load_audio, write_wav
    from polymodal.models.video_captioner import load_clip

    model = _model()
    why = explain_clip(model, load_clip(files["silent"], model.cfg.media), QUESTION)
    assert why.sound == [] and why.windows == [] and len(why.frames) == 4
    wav = write_wav(files["root"] / "sound.wav", load_audio(files["clip"], 16000), 16000)
    why = explain_clip(model, load_clip(wav, model.cfg.media), QUESTION, windows=4)
    assert why.frames == [] and len(why.sound) == 4 and json.loads(json.dumps(why.to_dict()))["frames"] == []


def test_cli_explains_a_clip_and_refuses_bad_input_in_one_line(files, tmp_path):
    from PIL import Image

    model_dir = _model().save_pretrained(tmp_path / "video_qa")
    code, out, err = run_cli(["explain", str(model_dir), str(files["clip"]), "--question", QUESTION,
                              "--out", str(tmp_path / "why")])
    assert code == 0, err
    assert out.startswith("video_qa: ") and "frames, most relied on first" in out and "sound, most relied" in out
    data = json.loads((tmp_path / "why" / "explanation.json").read_text())
    assert data["question"] == QUESTION and len(data["frames"]) == 4 and len(data["sound"]) == 8
    assert Image.open(tmp_path / "why" / "timeline.png").width > 200

    audio_only = _model(("audio",)).save_pretrained(tmp_path / "audio_qa")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    bad = {"add --question": [str(model_dir), str(files["clip"])],  # what the one line must say: the arguments
           "is an image": [str(model_dir), str(files["image"]), "--question", QUESTION],
           "cannot open media": [str(model_dir), str(tmp_path / "junk.mp4"), "--question", QUESTION],
           "has no audio track": [str(audio_only), str(files["silent"]), "--question", QUESTION],
           "occlusion in time only": [str(model_dir), str(files["clip"]), "--question", QUESTION,
                                      "--method", "gradient_x_input"]}
    for says, args in bad.items():
        code, out, err = run_cli(["explain", *args, "--out", str(tmp_path / "no")])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert not (tmp_path / "no" / "explanation.json").exists()
