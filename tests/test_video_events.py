"""Structured scores of video event captions: parsing every phrase the generator makes, matching, and what
each kind of mistake lowers (and what it leaves alone)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, replace

import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig
from polymodal.data.audio import MelConfig
from polymodal.data.clips import ClipBank, read_annotations
from polymodal.data.shapes_video import Event, VideoClip, sample_clip, write_shapes_video
from polymodal.eval.video_events import KINDS, ParsedEvent, parse_events, parse_summary_kinds, score_events
from polymodal.models.video_captioner import VideoCaptioner, VideoCaptionerConfig
from polymodal.nn.media import MediaConfig
from polymodal.text.tokenizer import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _clips(n: int = 40) -> list[VideoClip]:
    return [sample_clip(random.Random(i)) for i in range(n)]


def _annotation(i: int, clip: VideoClip) -> dict:
    return {"id": str(i), "caption": clip.caption(), "summary": clip.summary(),
            "events": [{**asdict(e), "time": e.time} for e in clip.events]}


def _caption(events: list[Event]) -> str:
    return ", then ".join(e.phrase() for e in events)


def test_parse_round_trips_every_phrase_kind_the_generator_makes():
    clips = _clips(200)
    assert {e.kind for c in clips for e in c.events} == set(KINDS)  # every phrasing is exercised
    for clip in clips:
        assert parse_events(clip.caption()) == [ParsedEvent.from_dict(asdict(e)) for e in clip.events]
        assert parse_summary_kinds(clip.summary()) == Counter(e.kind for e in clip.events)
    sloppy = "A Red Circle enters from the LEFT then  an blue star hits the cyan square. a green diamond appears"
    assert [e.full_key for e in parse_events(sloppy)] == [("enters", "red", "circle", "left", "", "", ""),
                                                          ("collides", "blue", "star", "", "", "cyan", "square"),
                                                          ("appears", "green", "diamond", "", "", "", "")]


def test_perfect_prediction_scores_one():
    clips = _clips()
    truth = [_annotation(i, c) for i, c in enumerate(clips)]
    s = score_events({a["id"]: a["caption"] for a in truth}, truth, {a["id"]: a["summary"] for a in truth},
                     {a["id"]: [e["time"] for e in a["events"]] for a in truth})
    rates = ["precision", "recall", "f1", "full_precision", "full_recall", "full_f1", "side_accuracy",
             "exact_clip_rate", "summary_kind_accuracy"]
    for scores in (s, s["seen"]):
        assert all(scores[k] == 1.0 for k in rates) and scores["time_mae"] == 0.0
        assert all(v == 1.0 for k, v in scores.items() if k.startswith("recall/"))
    assert s["summary_count_accuracy"] == 1.0 and "summary_count_accuracy" not in s["seen"]
    assert s["clips"] == 40 and s["events"] == s["predicted"] == s["time_events"] == sum(len(a["events"]) for a in truth)
    assert s["unparsed"] == 0 and "recall/heard" in s and "recall/heard" not in s["seen"]
    assert s["side_events"] == sum(e.kind in ("enters", "exits") for c in clips for e in c.events)
    json.dumps(s)


def test_a_wrong_side_lowers_side_accuracy_not_event_precision_or_recall():
    clip = next(c for c in _clips() if any(e.kind == "enters" for e in c.events))
    flip = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    events = [replace(e, side=flip[e.side]) if e.kind == "enters" else e for e in clip.events]
    s = score_events({"0": _caption(events)}, [_annotation(0, clip)])
    assert s["precision"] == s["recall"] == s["recall/enters"] == 1.0
    assert s["side_accuracy"] < 1.0 and s["full_recall"] < 1.0 and s["exact_clip_rate"] == 0.0


def test_a_hallucinated_event_lowers_precision_only():
    clip = _clips()[0]
    used = {(e.colour, e.shape) for e in clip.events}
    colour, shape = next((c, s) for c, s in [("white", "star"), ("cyan", "hexagon")] if (c, s) not in used)
    caption = clip.caption() + f", then a {colour} {shape} appears"
    s = score_events({"0": caption}, [_annotation(0, clip)])
    n = len(clip.events)
    assert s["precision"] == s["full_precision"] == pytest.approx(n / (n + 1))
    assert s["recall"] == s["full_recall"] == s["side_accuracy"] == 1.0 and s["exact_clip_rate"] == 0.0


def test_a_missing_event_lowers_recall_only():
    clip = _clips()[1]
    dropped = clip.events[1]
    s = score_events({"0": _caption([e for e in clip.events if e is not dropped])}, [_annotation(0, clip)])
    n = len(clip.events)
    assert s["recall"] == s["full_recall"] == pytest.approx((n - 1) / n)
    assert s["precision"] == s["full_precision"] == 1.0 and s[f"recall/{dropped.kind}"] == 0.0
    assert s["exact_clip_rate"] == 0.0


def test_order_does_not_matter_for_matching_but_does_for_exact_clips():
    clip = _clips()[2]
    s = score_events({"0": _caption(clip.events[::-1])}, [_annotation(0, clip)])
    assert s["f1"] == s["full_f1"] == 1.0 and s["exact_clip_rate"] == 0.0


def test_summary_kinds_and_the_seen_variant():
    assert parse_summary_kinds("four events, an appearance, a disappearance, a collision and a sound off screen") \
        == Counter({"appears": 1, "disappears": 1, "collides": 1, "heard": 1})
    assert parse_summary_kinds("") == Counter() and parse_summary_kinds("zzz events") == Counter()
    clip = next(c for c in _clips() if any(e.kind == "heard" for e in c.events))
    seen = [e for e in clip.events if e.kind != "heard"]
    watched = VideoClip(clip.background, clip.tracks, seen)  # what a model that only watches would say
    s = score_events({"0": watched.caption()}, [_annotation(0, clip)], {"0": watched.summary()})
    assert s["recall"] < 1.0 and s["summary_kind_accuracy"] == 0.0 and s["summary_count_accuracy"] == 0.0
    assert s["seen"]["recall"] == s["seen"]["precision"] == s["seen"]["exact_clip_rate"] == 1.0
    assert s["seen"]["summary_kind_accuracy"] == 1.0


def test_unreadable_text_does_not_crash_and_counts_against_precision():
    clip = _clips()[3]
    truth = [_annotation(0, clip), _annotation(1, _clips()[4]), _annotation(2, _clips()[5])]
    bad = {"0": "<unk> <unk> then then , .", "1": clip.caption() + ", then a red circle enters from the"}
    s = score_events(bad, truth, {"0": "", "1": "<unk>"}, {"0": [], "1": [0.5]})  # clip "2": no caption at all
    assert s["unparsed"] == 2 and s["predicted"] == len(clip.events) + 2
    assert s["recall"] == 0.0 and s["exact_clip_rate"] == 0.0 and s["summary_kind_accuracy"] == 0.0
    assert [e.kind for e in parse_events("a red circle enters from the")] == [""]
    assert parse_events("") == [] and parse_events(" then , ") == []
    json.dumps(s)


def test_time_error_follows_the_caption_order():
    clip = _clips()[6]
    truth = _annotation(0, clip)
    late = [e["time"] + 0.5 for e in truth["events"]][::-1]  # given in any order: sorted, then i-th time, i-th event
    s = score_events({"0": clip.caption()}, [truth], times={"0": late})
    assert s["time_mae"] == pytest.approx(0.5) and s["time_events"] == len(clip.events)
    short = score_events({"0": clip.caption()}, [truth], times={"0": [truth["events"][0]["time"]]})
    assert short["time_mae"] == 0.0 and short["time_events"] == 1  # events without a time are left out
    assert "time_mae" not in score_events({"0": clip.caption()}, [truth])


def test_evaluate_video_captions_reports_structured_scores(tmp_path, monkeypatch):
    from polymodal.train.video import evaluate_video_captions

    monkeypatch.setattr("polymodal.train.video.caption_metrics", lambda *_: {})  # METEOR's Java costs seconds

    folder = write_shapes_video(tmp_path / "world", n=3, size=32, progress=False)
    clips = read_annotations(folder)
    bank = ClipBank.build(clips, folder, frames=8, size=32, mel=MelConfig(), encode=None, progress=False)
    tok = WordTokenizer.build([c["caption"] for c in clips] + [c["summary"] for c in clips])
    media = MediaConfig(encoder=EncoderConfig(name="small_cnn", width=4), image_size=32, frames=8, grid=2, dim=32,
                        audio_width=4, audio_tokens=8, heads=2)
    torch.manual_seed(0)
    model = VideoCaptioner(VideoCaptionerConfig(media=media, decoder=DecoderConfig(
        embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0, max_len=12)), tok)
    out = evaluate_video_captions(model, clips, bank, beam_size=1)
    s = out["structured"]
    assert s["clips"] == 3 and s["events"] == sum(len(c["events"]) for c in clips)
    assert {"precision", "side_accuracy", "summary_kind_accuracy", "time_mae", "seen"} <= set(s)
    json.dumps(out)
