"""Structured scores of Shapes World video event captions: read the events back out and count them.

CIDEr-D rewards the template words a generated caption shares with its reference ("... enters from
the ..., then ... turns ...") even when the shapes, colours and sides are wrong. These scores read
each generated caption back into events (kind, colour, shape, side, new colour, other object) with
patterns built from the generator's own phrasing (`Event.phrase`) and vocabulary, and match them
one-to-one, in any order, with the clip's annotated events:

    precision / recall / f1                 events with the right (kind, colour, shape); a phrase that
                                            cannot be read counts as a wrong prediction
    full_precision / full_recall / full_f1  the same on the whole event: side, new colour, other object too
    side_accuracy (side_events)             matched entrances and exits with the right side / matched ones
    side_recall                             annotated entrances and exits matched and with the right side
    recall/<kind>                           recall per kind of annotated event
    exact_clip_rate                         clips whose caption names every event right, in order, no more
    summary_kind_accuracy                   summaries naming the clip's kinds of event (as a multiset)
    summary_count_accuracy                  summaries whose number word is the clip's event count
    time_mae (time_events)                  seconds between a matched event's predicted and annotated start
    seen                                    the above on visible events only (kind != "heard"): compares
                                            models that only watch with models that also listen

Counts (`clips`, `events`, `predicted`, `unparsed`, `side_events`, `time_events`) sit beside the rates;
a rate with nothing to count is 0.0.

Example:
    >>> [e.kind for e in parse_events("a red circle enters from the left then a blue star hums, then")]
    ['enters', '']
    >>> clip = {"id": "1", "events": [{"kind": "enters", "colour": "red", "shape": "circle", "side": "left"}]}
    >>> s = score_events({"1": "a red circle enters from the right, then a cyan star appears"}, [clip])
    >>> s["precision"], s["recall"], s["full_recall"], s["side_accuracy"], s["side_events"]
    (0.5, 1.0, 0.0, 0.0, 1)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..data.shapes import COLOURS, SHAPES
from ..data.shapes_video import FPS, NOUNS, NUMBERS, SIDES, VISIBLE_KINDS, Event

KINDS = (*VISIBLE_KINDS, "heard")
SLOTS = {"colour": tuple(COLOURS), "shape": SHAPES, "side": SIDES, "new_colour": tuple(COLOURS),
         "other_colour": tuple(COLOURS), "other_shape": SHAPES}  # the words each part of a phrase can be


@dataclass(frozen=True)
class ParsedEvent:
    """One event read from a caption; `kind` is "" for a phrase that could not be read (kept in `text`)."""

    kind: str = ""
    colour: str = ""
    shape: str = ""
    side: str = ""
    new_colour: str = ""
    other_colour: str = ""
    other_shape: str = ""
    text: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """What happened to which shape: (kind, colour, shape)."""
        return self.kind, self.colour, self.shape

    @property
    def full_key(self) -> tuple[str, ...]:
        """The whole event: the key, the side, the new colour and the other object."""
        return self.key + (self.side, self.new_colour, self.other_colour, self.other_shape)

    @classmethod
    def from_dict(cls, event: Mapping[str, Any]) -> ParsedEvent:
        """From an annotation's event (extra keys such as `frame` and `time` are ignored).

        Example:
            >>> ParsedEvent.from_dict({"kind": "appears", "colour": "red", "shape": "star", "frame": 3}).key
            ('appears', 'red', 'star')
        """
        return cls(**{f.name: str(event.get(f.name) or "") for f in fields(cls) if f.name != "text"})


def _pattern(kind: str) -> re.Pattern[str]:
    """The generator's phrase for `kind` with each slot a named group ("a {colour} {shape} enters from the {side}").

    The template comes from `Event.phrase` with placeholder words, so a new phrasing there is read here too.
    """
    placeholders = {slot.upper(): slot for slot in SLOTS}
    words = Event(kind=kind, frame=0, **{slot: slot.upper() for slot in SLOTS}).phrase().split()
    parts = []
    for word, after in zip(words, [*words[1:], ""], strict=True):
        if word in placeholders:
            parts.append(f"(?P<{placeholders[word]}>{'|'.join(SLOTS[placeholders[word]])})")
        elif word in ("a", "an") and after in placeholders:
            parts.append("(?:an?|the)")  # tolerate a wrong article
        else:
            parts.append(re.escape(word))
    return re.compile(r"\b" + r"\s+".join(parts) + r"\b")


PATTERNS = {kind: _pattern(kind) for kind in KINDS}
_SPLIT = re.compile(r"\s*,?\s*\bthen\b\s*|\s*[,.;]\s*(?=(?:an?|the)\b)|\s*[.;]\s*")
_SUMMARY_NOUNS = {noun.split(" ", 1)[1]: kind for kind, noun in NOUNS.items()}  # "exit" -> "exits"
_SUMMARY = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SUMMARY_NOUNS), key=len, reverse=True)) + r")\b")


def _read_phrase(phrase: str) -> list[ParsedEvent]:
    """Every event named in one phrase, left to right (non-overlapping); one unread event if none."""
    found = sorted(((m.start(), -len(m.group()), kind, m) for kind, p in PATTERNS.items()
                    for m in p.finditer(phrase)), key=lambda f: f[:3])
    out, end = [], 0
    for start, _, kind, m in found:
        if start >= end:
            out.append(ParsedEvent(kind, **{k: v or "" for k, v in m.groupdict().items()}, text=m.group()))
            end = m.end()
    return out or [ParsedEvent(text=phrase)]


def parse_events(caption: str) -> list[ParsedEvent]:
    """The events a generated caption names, in its order; a phrase that cannot be read gives kind "".

    Phrases are split at ", then" / "then" (and at sentence ends); a phrase may name more than one event
    ("a red star appears and a blue circle disappears"). Words outside the vocabulary never match.

    Example:
        >>> [e.full_key for e in parse_events("a green square turns cyan, then an red star hits a blue circle")]
        [('changes', 'green', 'square', '', 'cyan', '', ''), ('collides', 'red', 'star', '', '', 'blue', 'circle')]
    """
    phrases = (p.strip(" ,.;") for p in _SPLIT.split(" ".join(caption.lower().split())))
    return [e for p in phrases if p and p != "and" for e in _read_phrase(p)]


def parse_summary_kinds(summary: str) -> Counter[str]:
    """The kinds of event a summary names, with repeats (the inverse of `shapes_video.NOUNS`).

    Example:
        >>> sorted(parse_summary_kinds("three events, a sound off screen, an exit and an exit").items())
        [('exits', 2), ('heard', 1)]
    """
    return Counter(_SUMMARY_NOUNS[m.group(1)] for m in _SUMMARY.finditer(summary.lower()))


def _summary_number(summary: str) -> int | None:
    words = summary.lower().split()
    return NUMBERS.index(words[0]) if words and words[0] in NUMBERS else None


def _match(pred: Sequence[ParsedEvent], truth: Sequence[ParsedEvent]) -> dict[int, int]:
    """One-to-one truth index -> prediction index: equal whole events first, then equal (kind, colour, shape).

    Keys are discrete, so this greedy order is optimal: it keeps the most key matches (per key, the smaller
    count) and, among them, the most whole-event matches.
    """
    pairs: dict[int, int] = {}
    for key in (lambda e: e.full_key, lambda e: e.key):
        for j, t in enumerate(truth):
            used = set(pairs.values())
            i = next((i for i, p in enumerate(pred) if p.kind and i not in used and key(p) == key(t)), None)
            if j not in pairs and i is not None:
                pairs[j] = i
    return pairs


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


@dataclass
class EventTally:
    """Counts summed over clips (`add` one clip at a time); `scores` turns them into rates."""

    visible_only: bool = False  # leave out events only heard (kind "heard"), predicted and annotated
    clips: int = 0
    events: int = 0
    predicted: int = 0
    unparsed: int = 0
    matched: int = 0
    full_matched: int = 0
    exact: int = 0
    sides: int = 0
    sides_right: int = 0
    per_kind: Counter[str] = field(default_factory=Counter)
    per_kind_matched: Counter[str] = field(default_factory=Counter)
    summaries: int = 0
    summary_kinds_right: int = 0
    summary_count_right: int = 0
    timed: int = 0
    time_error: float = 0.0

    def add(self, pred: Sequence[tuple[ParsedEvent, float | None]], truth: Sequence[tuple[ParsedEvent, float]],
            summary: str | None = None) -> None:
        """One clip: predicted events (with a predicted time or None), annotated events with theirs."""
        if self.visible_only:
            pred, truth = [e for e in pred if e[0].kind != "heard"], [e for e in truth if e[0].kind != "heard"]
        pairs = _match([p for p, _ in pred], [t for t, _ in truth])
        self.clips += 1
        self.events += len(truth)
        self.predicted += len(pred)
        self.unparsed += sum(not p.kind for p, _ in pred)
        self.matched += len(pairs)
        self.exact += [p.full_key for p, _ in pred] == [t.full_key for t, _ in truth]
        self.per_kind.update(t.kind for t, _ in truth)
        for j, i in pairs.items():
            (t, when), (p, guess) = truth[j], pred[i]
            self.full_matched += p.full_key == t.full_key
            self.per_kind_matched[t.kind] += 1
            if t.kind in ("enters", "exits"):
                self.sides += 1
                self.sides_right += p.side == t.side
            if guess is not None:
                self.timed += 1
                self.time_error += abs(guess - when)
        if summary is not None:
            named = parse_summary_kinds(summary)
            if self.visible_only:
                del named["heard"]
            self.summaries += 1
            self.summary_kinds_right += named == Counter(t.kind for t, _ in truth)
            self.summary_count_right += _summary_number(summary) == len(truth)

    def scores(self, with_summaries: bool = False, with_times: bool = False) -> dict[str, float]:
        """Rates and counts: see the module docstring for the keys."""
        out: dict[str, float] = {"clips": self.clips, "events": self.events, "predicted": self.predicted,
                                 "unparsed": self.unparsed}
        for name, hits in (("", self.matched), ("full_", self.full_matched)):
            p, r = _ratio(hits, self.predicted), _ratio(hits, self.events)
            out.update({f"{name}precision": p, f"{name}recall": r, f"{name}f1": _ratio(2 * p * r, p + r)})
        annotated_sides = self.per_kind["enters"] + self.per_kind["exits"]
        out.update(side_accuracy=_ratio(self.sides_right, self.sides), side_events=self.sides,
                   side_recall=_ratio(self.sides_right, annotated_sides),
                   exact_clip_rate=_ratio(self.exact, self.clips))
        out.update({f"recall/{k}": _ratio(self.per_kind_matched[k], self.per_kind[k])
                    for k in KINDS if self.per_kind[k]})
        if with_summaries:
            out["summary_kind_accuracy"] = _ratio(self.summary_kinds_right, self.summaries)
            if not self.visible_only:  # the number word counts the sounds off screen too
                out["summary_count_accuracy"] = _ratio(self.summary_count_right, self.summaries)
        if with_times:
            out.update(time_mae=_ratio(self.time_error, self.timed), time_events=self.timed)
        return out


def score_events(predicted: Mapping[str, str], clips: Sequence[Mapping[str, Any]],
                 summaries: Mapping[str, str] | None = None,
                 times: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """Structured scores of generated event captions (and summaries, event times) against the clips' events.

    Args:
        predicted: clip id -> generated event caption (a missing id is an empty caption).
        clips: annotations, each with "id" and "events" (dicts with kind, colour, shape, side, new_colour,
            other_colour, other_shape and time or frame), as `data.clips.read_annotations` gives them.
        summaries: clip id -> generated summary, scored by the kinds of event it names.
        times: clip id -> predicted event start times in seconds; sorted, the i-th belongs to the caption's
            i-th event (captions are in time order).

    Returns:
        A JSON-able dict of rates and counts (keys in the module docstring), and under "seen" the same on
        visible events only; summaries there are scored on their visible kinds, without the number word.

    Example:
        >>> clip = {"id": "a", "events": [{"kind": "appears", "colour": "red", "shape": "star", "time": 1.0},
        ...                               {"kind": "heard", "colour": "blue", "shape": "circle", "time": 2.0}]}
        >>> s = score_events({"a": "a red star appears"}, [clip], {"a": "two events, an appearance"}, {"a": [1.5]})
        >>> s["recall"], s["summary_kind_accuracy"], s["time_mae"], s["seen"]["recall"], s["seen"]["exact_clip_rate"]
        (0.5, 0.0, 0.5, 1.0, 1.0)
    """
    tallies = (EventTally(), EventTally(visible_only=True))
    for clip in clips:
        cid = clip["id"]
        guesses = sorted(times.get(cid, ())) if times is not None else []
        events = parse_events(predicted.get(cid, ""))
        pred = [(e, guesses[i] if i < len(guesses) else None) for i, e in enumerate(events)]
        truth = [(ParsedEvent.from_dict(e), float(e["time"]) if "time" in e else e.get("frame", 0) / FPS)
                 for e in clip["events"]]
        for tally in tallies:
            tally.add(pred, truth, None if summaries is None else summaries.get(cid, ""))
    flags = {"with_summaries": summaries is not None, "with_times": times is not None}
    return {**tallies[0].scores(**flags), "seen": tallies[1].scores(**flags)}


def score_reads(reads: Mapping[str, Sequence[Mapping[str, Any]]], clips: Sequence[Mapping[str, Any]],
                times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """How well a model's per-step event reads (`VideoCaptioner.read_events`) name the annotated events.

    At the step nearest each annotated start: `field/<name>` the share of events read right in <name>, among the
    events that have one (a side only for entrances and exits), `all_fields` events read right in every field,
    `kind_core` kind + colour + shape right (the caption targets' triple); `false_alarms` steps read as an event
    (p_event > 0.5) with none annotated there, per clip.

    Example:
        >>> clip = {"id": "1", "events": [{"kind": "enters", "colour": "red", "time": 0.5}]}
        >>> reads = {"1": [{"p_event": 0.1, "kind": "", "colour": ""}, {"p_event": 0.9, "kind": "enters", "colour": "blue"}]}
        >>> score_reads(reads, [clip], {"1": [0.0, 0.5]})
        {'events': 1, 'all_fields': 0.0, 'kind_core': 0.0, 'false_alarms': 0.0, 'field/kind': 1.0, 'field/colour': 0.0}
    """
    right: Counter[str] = Counter()
    having: Counter[str] = Counter()
    n = alarms = 0
    for clip in clips:
        steps, read = list(times[clip["id"]]), reads[clip["id"]]
        hit_steps = set()
        for e in clip["events"]:
            step = min(range(len(steps)), key=lambda i: abs(steps[i] - float(e["time"])))
            hit_steps.add(step)
            names = [k for k in read[step] if k != "p_event"]
            ok = {k: read[step][k] == str(e.get(k, "")) for k in names}
            right.update(k for k, v in ok.items() if v and e.get(k, ""))
            having.update(k for k in names if e.get(k, ""))
            right["all_fields"] += all(ok.values())
            right["kind_core"] += all(ok.get(k, True) for k in ("kind", "colour", "shape"))
            n += 1
        alarms += sum(1 for i, r in enumerate(read) if r["p_event"] > 0.5 and i not in hit_steps)
    names = [k for k in (reads[clips[0]["id"]][0] if clips else {}) if k != "p_event"]
    return {"events": n, "all_fields": _ratio(right["all_fields"], n), "kind_core": _ratio(right["kind_core"], n),
            "false_alarms": _ratio(alarms, len(clips)), **{f"field/{k}": _ratio(right[k], having[k]) for k in names}}
