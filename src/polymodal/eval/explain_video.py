"""Why did the video QA model answer that? Which frames, which moments of the sound and which words of the
question an answer rests on, by occlusion in time, with the deletion test that checks them (bench/explain_video.py).

Occlusion in time, the video form of eval/explain.py's default (Zeiler & Fergus 2014): each sampled frame in turn
is replaced by the clip's mean frame, and each of `windows` equal slices of the log-mel spectrogram by silence; a
part's importance is how much the answer's score drops without it. Occlusion, because
- it needs no gradients: the frozen frame encoder, the audio CNN, the LSTM question encoder and the missing-token
  stand-ins are explained exactly as they run;
- it measures what the answer causally depends on, not where attention looked (Jain & Wallace 2019);
- it costs one batched forward per frame or window (16 + 8 by default), and the frames are encoded once: the frame
  encoder sees one frame at a time, so an occluded frame's features are the mean frame's (`clip_input`).
The mean frame keeps what stays (the background, shapes that do not move) and blurs what moves, comes or goes,
which is what the clips' events are. Silence is each mel band's minimum over the clip, the clip's own quietest
level (log-mel zeros would be power 1, loud); on Shapes World clips it is the log-mel floor in most bands (with the
per-band median instead, on 98 off-screen questions, the sound pointing game moved 2 points, the deletion curve <= 6).

The score is the answer's log-odds log p / (1 - p), the answer the model's top answer on the intact clip, as for
images (`vqa_target` says why). Words are left out one at a time (`leave_one_out`). A clip without a modality (a
silent video, a sound file), or one the model does not read, has no scores for it.

Example:
    >>> clip = {"frames": torch.zeros(4, 3, 8, 8)}
    >>> clip["frames"][2] = 1.0  # something happens in frame 2
    >>> watches_frame_2 = lambda batch: batch["frames"][:, 2].mean((1, 2, 3))
    >>> int(frame_occlusion(watches_frame_2, ClipInput.of(clip)).argmax())
    2
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.audio import MelConfig
from ..data.qa import encode_text
from ..errors import InputError
from .explain import answer_log_odds, leave_one_out, random_ranking

__all__ = ["ClipExplanation", "ClipInput", "clip_input", "deletion_changes_clip", "explain_clip", "frame_occlusion",
           "random_ranking", "sound_occlusion", "window_spans"]

ClipScore = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # a batch of clips' media -> (B,) scores
FRAME_KEYS = ("frame_features", "frames")  # what a clip's frames may be given as (MediaEncoder.forward)
HOP_SECONDS = MelConfig().hop_length / MelConfig().sample_rate  # the default mel's column step


def window_spans(columns: int, windows: int) -> list[tuple[int, int]]:
    """`windows` equal, contiguous [start, end) column spans covering a spectrogram `columns` wide (fewer when it is
    narrower than that).

    Example:
        >>> window_spans(10, 4)
        [(0, 2), (2, 5), (5, 7), (7, 10)]
    """
    n = min(windows, columns)
    return [(i * columns // n, (i + 1) * columns // n) for i in range(n)]


@dataclass
class ClipInput:
    """One clip as a model reads it ("frames" (T, 3, S, S) or their "frame_features" (T, R, C); "mel" (M, L)), with
    what stands in for an occluded part and where each part lies in time."""

    media: dict[str, torch.Tensor]
    frame_fill: torch.Tensor | None = None        # the mean frame (or its features)
    sound_fill: torch.Tensor | None = None        # (M, 1) each band's minimum: silence
    times: list[float] = field(default_factory=list)  # seconds of each frame
    seconds_per_column: float = HOP_SECONDS       # the mel hop (centred windows: column j is at j * hop)

    @classmethod
    def of(cls, clip: dict[str, torch.Tensor], seconds_per_column: float = HOP_SECONDS) -> ClipInput:
        """A `load_clip`-style clip as it is (frames as pixels), with the mean frame and silence as fills."""
        media = {k: v for k, v in clip.items() if k in (*FRAME_KEYS, "mel")}
        key = next((k for k in FRAME_KEYS if k in media), None)
        fill = media[key].float().mean(0) if key else None
        silence = media["mel"].amin(1, keepdim=True) if "mel" in media else None
        times = [float(t) for t in clip["times"]] if "times" in clip and key else []
        return cls(media, fill, silence, times, seconds_per_column)

    @property
    def frame_key(self) -> str | None:
        return next((k for k in FRAME_KEYS if k in self.media), None)

    @property
    def frames(self) -> int:
        return len(self.media[self.frame_key]) if self.frame_key else 0

    @property
    def columns(self) -> int:
        return self.media["mel"].shape[-1] if "mel" in self.media else 0

    def occluded(self, frames: Sequence[int] = (), spans: Sequence[tuple[int, int]] = ()) -> dict[str, torch.Tensor]:
        """The media with the given frames set to the mean frame and the given mel column spans silenced."""
        out = dict(self.media)
        if frames and self.frame_key:
            x = out[self.frame_key].clone()
            x[list(frames)] = self.frame_fill.to(x.dtype)  # type: ignore[union-attr]
            out[self.frame_key] = x
        if spans and "mel" in out:
            mel = out["mel"].clone()
            for a, b in spans:
                mel[:, a:b] = self.sound_fill
            out["mel"] = mel
        return out


def clip_input(model: Any, clip: dict[str, torch.Tensor] | ClipInput) -> ClipInput:
    """A `load_clip` result as a VideoQA `model` reads it: only the modalities it uses, its frames encoded once (the
    mean frame's features after them, for occlusion). A ClipInput is passed through, so callers can encode once."""
    if isinstance(clip, ClipInput):
        return clip
    used = {"frames": "video", "mel": "audio"}
    media = {k: v.to(model.device) for k, v in clip.items() if used.get(k) in model.cfg.media.modalities}
    if not media:
        raise InputError(f"the clip has none of the modalities the model reads ({', '.join(model.cfg.media.modalities)})")
    mel_cfg = model.cfg.media.mel
    inputs = ClipInput.of({**media, **({"times": clip["times"]} if "times" in clip else {})},
                          mel_cfg.hop_length / mel_cfg.sample_rate)
    if "frames" in media:
        frames = media["frames"].float()
        with torch.no_grad():  # (T + 1, R, C): every frame, then the mean frame
            features = model.media.frame_features(torch.cat([frames, frames.mean(0, keepdim=True)])[None])[0]
        del inputs.media["frames"]
        inputs.media["frame_features"], inputs.frame_fill = features[:-1], features[-1]
    return inputs


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


@torch.no_grad()
def _drops(score: ClipScore, inputs: ClipInput, variants: list[dict[str, torch.Tensor]],
           batch_size: int) -> torch.Tensor:
    """(len(variants),) the intact clip's score minus each variant's, scored batch_size at a time."""
    base = float(score(_stack([inputs.media]))[0])
    scores = [score(_stack(variants[i:i + batch_size])).float().cpu() for i in range(0, len(variants), batch_size)]
    return base - torch.cat(scores) if scores else torch.zeros(0)


def frame_occlusion(score: ClipScore, inputs: ClipInput, batch_size: int = 32) -> torch.Tensor:
    """(T,) each frame's importance: the score drop when it alone is the mean frame (empty without frames)."""
    return _drops(score, inputs, [inputs.occluded(frames=[t]) for t in range(inputs.frames)], batch_size)


def sound_occlusion(score: ClipScore, inputs: ClipInput, windows: int = 8,
                    batch_size: int = 32) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(W,) each sound window's importance (the score drop when it alone is silent) and its column span."""
    spans = window_spans(inputs.columns, windows)
    return _drops(score, inputs, [inputs.occluded(spans=[s]) for s in spans], batch_size), spans


# ----------------------------------------------------------------------------- the model's answer
def _tokens(model: Any, text: str, check: bool = False) -> torch.Tensor:
    """(1, L) question ids; a text left with no known word (a question's words left out) reads as <unk>."""
    max_len = model.cfg.question.max_len
    ids = encode_text(model.tokenizer, text, max_len) if check else model.tokenizer.encode(text, max_len=max_len)
    return torch.tensor([ids or [model.tokenizer.unk_id]], device=model.device)


def _logits(model: Any, media: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    logits, _ = model({**media, "tokens": tokens.expand(len(next(iter(media.values()))), -1)})
    return logits


def _answer_score(model: Any, answer: int, text: str) -> ClipScore:
    tokens, temperature = _tokens(model, text), float(getattr(model, "temperature", 1.0))
    return lambda media: answer_log_odds(_logits(model, media, tokens), answer, temperature)


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """The model in eval mode (no dropout: an occluded part, not chance, must change the score), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def _top_answer(model: Any, inputs: ClipInput, question: str) -> int:
    return int(_logits(model, _stack([inputs.media]), _tokens(model, question, check=True)).argmax(-1)[0])


# ----------------------------------------------------------------------------- explanations
@dataclass
class ClipExplanation:
    """Which frames, sound windows and words a video QA answer rests on; higher = more (the score's drop without it)."""

    output: str
    score: float                                     # the answer's log-odds on the intact clip
    frames: list[float] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)  # seconds, one per frame
    sound: list[float] = field(default_factory=list)
    windows: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds, one per sound window
    words: list[tuple[str, float]] = field(default_factory=list)
    kind: str = "video_qa"
    method: str = "occlusion"

    def top_frames(self, k: int) -> list[int]:
        """The indices of the k most important frames, most important first."""
        return sorted(range(len(self.frames)), key=lambda i: -self.frames[i])[:k]

    def top_windows(self, k: int) -> list[int]:
        """The indices of the k most important sound windows, most important first."""
        return sorted(range(len(self.sound)), key=lambda i: -self.sound[i])[:k]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "output": self.output, "method": self.method, "score": round(self.score, 4),
                "frames": [{"time": round(t, 4), "importance": round(v, 4)}
                           for t, v in zip(self.frame_times, self.frames, strict=True)],
                "sound": [{"start": round(a, 4), "end": round(b, 4), "importance": round(v, 4)}
                          for (a, b), v in zip(self.windows, self.sound, strict=True)],
                "words": [{"word": w, "importance": round(s, 4)} for w, s in self.words]}


def explain_clip(model: Any, clip: dict[str, torch.Tensor] | ClipInput, question: str,
                 windows: int = 8) -> ClipExplanation:
    """Explain a video QA model's answer to `question` about a clip (`load_clip`'s result, or a `clip_input`).

    Example:
        >>> from polymodal.models.video_qa import VideoQA, VideoQAConfig
        >>> from polymodal.nn.media import MediaConfig
        >>> from polymodal.text.tokenizer import WordTokenizer
        >>> model = VideoQA(VideoQAConfig(media=MediaConfig(image_size=32, frames=4)),
        ...                 WordTokenizer.build(["what shape enters?"]), answers=["star", "circle"])
        >>> clip = {"frames": torch.zeros(4, 3, 32, 32), "times": torch.tensor([0.25, 0.75, 1.25, 1.75])}
        >>> why = explain_clip(model, clip, "what shape enters?")  # a silent video: frames and words only
        >>> len(why.frames), why.sound, [w for w, _ in why.words]
        (4, [], ['what', 'shape', 'enters'])
    """
    if windows < 1:
        raise InputError(f"windows must be at least 1, got {windows}")
    with _evaluating(model), torch.no_grad():
        inputs = clip_input(model, clip)
        answer = _top_answer(model, inputs, question)
        score, intact = _answer_score(model, answer, question), _stack([inputs.media])
        base = float(score(intact)[0])
        frames = frame_occlusion(score, inputs)
        sound, spans = sound_occlusion(score, inputs, windows)
        words = leave_one_out(question.rstrip("?").split(), base,
                              lambda text: float(_answer_score(model, answer, text)(intact)[0]))
    times = inputs.times or [float(t) for t in range(inputs.frames)]  # no times given: frame numbers
    seconds = [(a * inputs.seconds_per_column, b * inputs.seconds_per_column) for a, b in spans]
    return ClipExplanation(model.answers[answer], base, frames.tolist(), times, sound.tolist(), seconds, words)


@torch.no_grad()
def deletion_changes_clip(model: Any, clip: dict[str, torch.Tensor] | ClipInput, question: str, order: Sequence[int],
                          ks: Sequence[int], part: str = "frames", windows: int = 8) -> list[bool]:
    """For each k: does the answer change when the first k frames (`part` "frames") or sound windows ("sound") of
    `order` are occluded together? With `random_ranking(n, seed)` as `order`: the deletion test's baseline."""
    if part not in ("frames", "sound"):
        raise InputError(f"part must be 'frames' or 'sound', got {part!r}")
    with _evaluating(model):
        inputs = clip_input(model, clip)
        answer = _top_answer(model, inputs, question)
        if part == "frames":
            variants = [inputs.occluded(frames=list(order[:k])) for k in ks]
        else:
            spans = window_spans(inputs.columns, windows)
            variants = [inputs.occluded(spans=[spans[i] for i in order[:k]]) for k in ks]
        logits = _logits(model, _stack(variants), _tokens(model, question, check=True))
    return [int(a) != answer for a in logits.argmax(-1)]
