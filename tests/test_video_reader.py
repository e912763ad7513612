"""The event reader of the video captioner: per-step labels from annotations, a motion-slot video model that
learns to name what starts at each step, saved and loaded with its fields, and its reads in `describe`."""

from __future__ import annotations

import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig
from polymodal.data.clips import ClipCaptionDataset, event_fields, event_labels
from polymodal.eval.video_events import score_reads
from polymodal.models.video_captioner import VideoCaptioner, VideoCaptionerConfig
from polymodal.nn.media import MediaConfig, MediaEncoder
from polymodal.text.tokenizer import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_event_fields_and_labels_follow_the_annotations(tiny_video_world):
    _, clips, bank = tiny_video_world
    fields = event_fields(clips)
    assert list(fields)[0] == "kind" and {"colour", "shape", "side"} <= set(fields)
    assert all(v[0] == "" for v in fields.values()) and "enters" in fields["kind"] + ["enters"]
    clip = clips[0]
    labels = event_labels(bank.tensors["times"][0], clip["events"], fields)
    assert labels.shape == (8, len(fields))
    named = labels[labels[:, 0] > 0]
    assert len(named) == len(clip["events"])  # one step per event, every event's kind and colour named
    kinds = sorted(fields["kind"][int(i)] for i in named[:, 0])
    assert kinds == sorted(e["kind"] for e in clip["events"])
    assert (labels[labels[:, 0] == 0][:, 1:] == -100).all()  # steps where nothing starts say nothing else


def test_motion_slots_keep_where_things_are():
    enc = MediaEncoder(MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=4, grid=4,
                                   dim=32, heads=2, frame_diff=True, temporal="motion_slots", modalities=["video"]))
    enc.eval()
    frames = torch.zeros(2, 4, 3, 32, 32)
    frames[0, 2:, :, 8:16, 0:8] = 2.0  # the same patch appears at the left edge / at the right edge
    frames[1, 2:, :, 8:16, 24:32] = 2.0
    with torch.no_grad():
        video = enc({"frames": frames})["video"]
    assert video.shape == (2, 4, 32)
    assert not torch.allclose(video[0, 2], video[1, 2], atol=1e-3)  # left is not right


def test_reader_learns_per_step_events_saves_and_describes(tiny_video_world, tmp_path):
    folder, clips, bank = tiny_video_world
    tok = WordTokenizer.build([c["caption"] for c in clips] + [c["summary"] for c in clips])
    fields = event_fields(clips)
    media = MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=8, grid=2, dim=32,
                        frame_diff=True, audio_width=4, audio_tokens=8, heads=2, temporal="motion_slots",
                        missing_token=True)
    torch.manual_seed(0)
    cfg = VideoCaptionerConfig(media=media, event_fields=fields, event_layers=1,
                               decoder=DecoderConfig(embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0,
                                                     max_len=40))
    model = VideoCaptioner(cfg, tok)
    data = ClipCaptionDataset(clips[:4], bank, tok, 40, fields=fields)
    batch = data.collate([data[i] for i in range(0, len(data), 2)])  # the 4 clips' event captions
    assert batch["event_labels"].shape == (4, 8, len(fields))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, losses = model(batch)
        first = float(losses["event_attr_loss"].detach()) if first is None else first
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert float(losses["event_attr_loss"]) < 0.3 * first
    reads = model.read_events(batch)
    times = {c["id"]: bank.tensors["times"][bank.row[c["id"]]].tolist() for c in clips[:4]}
    score = score_reads({c["id"]: r for c, r in zip(clips[:4], reads, strict=True)}, clips[:4], times)
    assert score["field/kind"] == 1.0 and score["kind_core"] >= 0.75  # the training clips, read back

    model.save_pretrained(tmp_path / "vc")
    loaded = VideoCaptioner.from_pretrained(tmp_path / "vc")
    assert loaded.cfg.event_fields == fields
    assert loaded.read_events(batch) == reads
    out = loaded.describe(folder / clips[0]["video"], beam_size=1)
    assert out["events"] and all("read" in e for e in out["events"])
    assert any(e["read"].get("kind") in fields["kind"][1:] for e in out["events"])
