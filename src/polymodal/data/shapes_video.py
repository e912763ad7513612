"""Shapes World video: seeded clips of shapes that enter, leave, appear, disappear, change colour and
collide, with a soundtrack, an event caption, a one-sentence summary, per-event times and questions.

Sound: every event makes a sound. Pitch comes from the shape (circle C4 ... hexagon F5), timbre from
the colour (its harmonic recipe), the envelope from the kind of event (entering glides up, leaving
glides down, appearing is a pluck, disappearing a swell, a colour change two timbres in turn);
collisions click. Some clips also have an event that is only heard: a shape sounds off screen.
Questions about it ("what shape is heard off screen?") can only be answered with the audio.

Example:
    >>> clip = sample_clip(random.Random(0))
    >>> clip.frames(64).shape, clip.soundtrack().shape
    ((32, 64, 64, 3), (64000,))
    >>> clip.caption()
    'a white square disappears, then a blue square appears, then an orange triangle enters from the top'
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .shapes import ALL_PAIRS, COLOURS, SHAPES, SIZES, Scene, ShapeObject, _place, render

FPS, FRAMES, SAMPLE_RATE = 8, 32, 16000
DURATION = FRAMES / FPS
VERSION = 1
MOVE = 4  # frames an object takes to enter or leave
PITCH_HZ = dict(zip(SHAPES, (262.0, 330.0, 392.0, 494.0, 587.0, 698.0), strict=True))
TIMBRE = {  # amplitude of harmonics 1, 2, 3, ...: the colour's "instrument"
    "red": (1.0,), "green": (1.0, 0.6), "blue": (1.0, 0.0, 0.6), "yellow": (1.0, 0.5, 0.33, 0.25),
    "purple": (1.0, 0.0, 0.33, 0.0, 0.2), "orange": (0.4, 1.0), "white": (1.0, 0.0, 0.0, 0.7),
    "cyan": (0.5, 0.0, 1.0),
}
VISIBLE_KINDS = ("enters", "exits", "appears", "disappears", "changes", "collides")
SIDES = ("left", "right", "top", "bottom")
NOUNS = {"enters": "an entrance", "exits": "an exit", "appears": "an appearance", "disappears": "a disappearance",
         "changes": "a colour change", "collides": "a collision", "heard": "a sound off screen"}
QUESTION_VERBS = {"enters": "enters", "exits": "leaves", "appears": "appears", "disappears": "disappears",
                  "changes": "changes colour", "collides": "hits another shape"}
NUMBERS = ("zero", "one", "two", "three", "four", "five")


def _article(word: str) -> str:
    return "an" if word[:1] in tuple("aeiou") else "a"


@dataclass
class Event:
    """One event: what happened to which shape, and at which frame (its sound starts there too)."""

    kind: str                         # a VISIBLE_KINDS entry, or "heard" (only in the soundtrack)
    shape: str
    colour: str
    frame: int
    side: str = ""                    # enters / exits
    new_colour: str = ""              # changes
    other_shape: str = ""             # collides
    other_colour: str = ""

    @property
    def time(self) -> float:
        return self.frame / FPS

    def phrase(self) -> str:
        what = f"{_article(self.colour)} {self.colour} {self.shape}"
        return {"enters": f"{what} enters from the {self.side}", "exits": f"{what} leaves to the {self.side}",
                "appears": f"{what} appears", "disappears": f"{what} disappears",
                "changes": f"{what} turns {self.new_colour}",
                "collides": f"{what} hits {_article(self.other_colour)} {self.other_colour} {self.other_shape}",
                "heard": f"{what} is heard off screen"}[self.kind]


@dataclass
class Track:
    """An object's state per frame: position, colour and whether it is there."""

    shape: str
    size: str
    xs: list[float]
    ys: list[float]
    colours: list[str]
    present: list[bool]

    @classmethod
    def still(cls, shape: str, colour: str, size: str, x: float, y: float, present: bool = True) -> Track:
        return cls(shape, size, [x] * FRAMES, [y] * FRAMES, [colour] * FRAMES, [present] * FRAMES)

    def move(self, start: int, end: int, a: tuple[float, float], b: tuple[float, float]) -> None:
        """Linear motion from a (at `start`) to b (at `end`), then stay at b."""
        for f in range(max(start, 0), FRAMES):
            u = min(max((f - start) / max(end - start, 1), 0.0), 1.0)
            self.xs[f], self.ys[f] = a[0] + u * (b[0] - a[0]), a[1] + u * (b[1] - a[1])
        for f in range(0, max(start, 0)):
            self.xs[f], self.ys[f] = a


@dataclass
class VideoClip:
    background: tuple[int, int, int]
    tracks: list[Track]
    events: list[Event]               # sorted by frame
    noise_seed: int = 0
    meta: dict = field(default_factory=dict)

    def frames(self, size: int = 64) -> np.ndarray:
        """(FRAMES, size, size, 3) uint8 RGB."""
        out = []
        for f in range(FRAMES):
            objects = tuple(ShapeObject(t.shape, t.colours[f], t.size, t.xs[f], t.ys[f])
                            for t in self.tracks if t.present[f])
            out.append(np.asarray(render(Scene(objects, self.background), size)))
        return np.stack(out)

    def soundtrack(self) -> np.ndarray:
        """(DURATION * SAMPLE_RATE,) float32 in [-1, 1]: every event's sound, mixed, with faint noise."""
        mix = np.zeros(int(DURATION * SAMPLE_RATE), np.float32)
        rng = np.random.default_rng(self.noise_seed)
        for e in self.events:
            sound = event_sound(e, rng)
            start = int(e.time * SAMPLE_RATE)
            end = min(start + len(sound), len(mix))
            mix[start:end] += sound[: end - start]
        mix += rng.normal(0, 0.003, len(mix)).astype(np.float32)
        return np.clip(mix * 0.5, -1.0, 1.0)

    def caption(self) -> str:
        """Every event in time order: "a red circle enters from the left, then a blue square disappears"."""
        return ", then ".join(e.phrase() for e in self.events)

    def summary(self) -> str:
        """One sentence: how many events and of which kinds."""
        nouns = [NOUNS[e.kind] for e in self.events]
        listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
        return f"{NUMBERS[len(nouns)]} events, {listed}"

    def questions(self, rng: random.Random) -> list[dict]:
        """Question/answer pairs; type `offscreen_*` needs the soundtrack, `visual_*` the frames."""
        heard = next((e for e in self.events if e.kind == "heard"), None)
        seen = [e for e in self.events if e.kind != "heard"]
        qa = [
            {"question": "is anything heard off screen?", "answer": "yes" if heard else "no", "type": "offscreen_any"},
            {"question": "what shape is heard off screen?", "answer": heard.shape if heard else "nothing",
             "type": "offscreen_shape"},
            {"question": "what colour is heard off screen?", "answer": heard.colour if heard else "nothing",
             "type": "offscreen_colour"},
            {"question": "how many events are seen?", "answer": NUMBERS[len(seen)], "type": "visual_count"},
        ]
        e = rng.choice(seen)
        qa.append({"question": f"what shape {QUESTION_VERBS[e.kind]}?", "answer": e.shape, "type": "visual_shape"})
        qa.append({"question": f"what colour is the shape that {QUESTION_VERBS[e.kind]}?", "answer": e.colour,
                   "type": "visual_colour"})
        absent = [k for k in VISIBLE_KINDS if k not in {s.kind for s in seen}]
        qa.append({"question": f"what shape {QUESTION_VERBS[rng.choice(absent)]}?", "answer": "nothing",
                   "type": "visual_shape"})
        for q in qa:
            q["audio_only"] = q["type"].startswith("offscreen")
        return qa


# ----------------------------------------------------------------------------- sound
def _voice(freq: np.ndarray, harmonics: tuple[float, ...]) -> np.ndarray:
    """A tone with a per-sample frequency (glides) and the given harmonic amplitudes."""
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    wave = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics) if a)
    return wave / sum(harmonics)


def event_sound(e: Event, rng: np.random.Generator) -> np.ndarray:
    """The sound of one event (see the module docstring)."""
    f, timbre = PITCH_HZ[e.shape], TIMBRE[e.colour]

    def span(seconds: float) -> np.ndarray:
        return np.linspace(0.0, 1.0, int(seconds * SAMPLE_RATE), dtype=np.float64)

    if e.kind == "collides":  # a click: 30 ms of decaying noise
        u = span(0.03)
        return (rng.normal(0, 0.4, len(u)) * np.exp(-u * 6)).astype(np.float32)
    if e.kind == "changes":  # the old colour's timbre, then the new one's
        u = span(0.2)
        fade = np.minimum(1.0, np.minimum(u, 1 - u) * 10)
        return np.concatenate([_voice(np.full(len(u), f), timbre) * fade,
                               _voice(np.full(len(u), f), TIMBRE[e.new_colour]) * fade]).astype(np.float32)
    u = span(0.4)
    freq = {"enters": f * (0.75 + 0.25 * u), "exits": f * (1.0 - 0.25 * u)}.get(e.kind, np.full(len(u), f))
    envelope = {"appears": np.exp(-u * 5), "disappears": np.minimum(1.0, (1 - u) * 10) * u,
                }.get(e.kind, np.minimum(1.0, np.minimum(u, 1 - u) * 8))
    return (_voice(freq, timbre) * envelope).astype(np.float32)


# ----------------------------------------------------------------------------- clips
def _outside(side: str, x: float, y: float, r: float) -> tuple[float, float]:
    return {"left": (-r, y), "right": (1 + r, y), "top": (x, -r), "bottom": (x, 1 + r)}[side]


def _spot(rng: random.Random, size: str, placed: list[ShapeObject]) -> tuple[float, float]:
    xy = _place(rng, SIZES[size], placed)
    if xy is None:  # crowded: allow overlap rather than fail (motion paths overlap anyway)
        r = SIZES[size]
        xy = (rng.uniform(r, 1 - r), rng.uniform(r, 1 - r))
    return xy


def sample_clip(rng: random.Random, events: int | None = None, heard_prob: float = 0.5) -> VideoClip:
    """A random clip with 2-3 visible events (distinct kinds) and, with `heard_prob`, one off-screen sound."""
    n_seen = events or rng.choice((2, 3))
    kinds = rng.sample(VISIBLE_KINDS, n_seen) + (["heard"] if rng.random() < heard_prob else [])
    rng.shuffle(kinds)
    window = (FRAMES - MOVE - 2) // len(kinds)
    onsets = [2 + i * window + rng.randint(0, max(window - 3, 0)) for i in range(len(kinds))]
    pairs = rng.sample(ALL_PAIRS, len(kinds) + 1)  # distinct (colour, shape): "the red circle" is unambiguous
    placed: list[ShapeObject] = []
    tracks: list[Track] = []
    out: list[Event] = []
    for kind, frame, (colour, shape) in zip(kinds, onsets, pairs, strict=False):
        size = rng.choice(tuple(SIZES)) if kind != "collides" else "small"
        e = Event(kind, shape, colour, frame)
        if kind == "collides":
            other_colour, other_shape = pairs[-1]
            e.other_shape, e.other_colour = other_shape, other_colour
            y, cx, gap = rng.uniform(0.2, 0.8), rng.uniform(0.45, 0.55), SIZES["small"]
            a = Track.still(shape, colour, "small", cx - 0.38, y)
            b = Track.still(other_shape, other_colour, "small", cx + 0.38, y)
            a.move(frame - 6, frame, (cx - 0.38, y), (cx - gap, y))
            b.move(frame - 6, frame, (cx + 0.38, y), (cx + gap, y))
            tracks += [a, b]
            placed += [ShapeObject(shape, colour, "small", cx - gap, y), ShapeObject(other_shape, other_colour,
                                                                                     "small", cx + gap, y)]
        elif kind != "heard":
            x, y = _spot(rng, size, placed)
            placed.append(ShapeObject(shape, colour, size, x, y))
            t = Track.still(shape, colour, size, x, y)
            if kind in ("enters", "exits"):
                e.side = rng.choice(SIDES)
                away = _outside(e.side, x, y, SIZES[size])
                t.move(frame, frame + MOVE, *((away, (x, y)) if kind == "enters" else ((x, y), away)))
            for f in range(FRAMES):
                t.present[f] = {"enters": f >= frame, "appears": f >= frame, "disappears": f < frame,
                                "exits": f <= frame + MOVE}.get(kind, True)
            if kind == "changes":
                e.new_colour = rng.choice([c for c in COLOURS if c != colour and (c, shape) not in pairs])
                t.colours[frame:] = [e.new_colour] * (FRAMES - frame)
            tracks.append(t)
        out.append(e)
    gray = rng.randint(28, 60)
    return VideoClip((gray, gray, gray + 4), tracks, sorted(out, key=lambda e: e.frame), rng.randrange(2**31))


# ----------------------------------------------------------------------------- dataset on disk
def split_sizes(n: int) -> dict[str, int]:
    val, test = max(n // 12, 1), max(n // 6, 1)
    return {"train": n - val - test, "val": val, "test": test}


def write_shapes_video(out_dir: str | Path, n: int = 1200, seed: int = 0, size: int = 64,
                       progress: bool = True) -> Path:
    """Write n clips as mp4 (H.264 + AAC) under `videos/{split}/` and `annotations.json`; returns the folder.

    A complete folder with the same settings is reused as is.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = write_shapes_video(f"{tmp.name}/shapes_video", n=3, size=32, progress=False)
        >>> sorted(p.name for p in folder.iterdir()), sorted(p.name for p in folder.glob("videos/*/*.mp4"))
        (['annotations.json', 'videos'], ['test_00000.mp4', 'train_00000.mp4', 'val_00000.mp4'])
        >>> tmp.cleanup()
    """
    from .video import write_video

    out = Path(out_dir)
    info = {"version": VERSION, "n": n, "seed": seed, "size": size, "fps": FPS, "frames": FRAMES,
            "sample_rate": SAMPLE_RATE}
    ann_path = out / "annotations.json"
    if ann_path.is_file():
        try:
            if json.loads(ann_path.read_text(encoding="utf-8")).get("info") == info:
                return out
        except (json.JSONDecodeError, AttributeError):
            pass
    clips = []
    jobs = [(s, i) for s, k in split_sizes(n).items() for i in range(k)]
    for split, i in tqdm(jobs, desc="shapes video", disable=not progress):
        rng = random.Random(f"shapes-video-{seed}-{split}-{i}")
        clip = sample_clip(rng)
        name = f"videos/{split}/{split}_{i:05d}.mp4"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(out / name, clip.frames(size), FPS, clip.soundtrack(), SAMPLE_RATE)
        clips.append({"id": f"{split}_{i:05d}", "split": split, "video": name, "caption": clip.caption(),
                      "summary": clip.summary(), "events": [{**asdict(e), "time": e.time} for e in clip.events],
                      "questions": clip.questions(rng)})
    tmp = ann_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"info": info, "clips": clips}), encoding="utf-8")
    tmp.replace(ann_path)  # written last: its presence marks the folder complete
    return out

