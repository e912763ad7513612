"""Multi-turn dialogues about Shapes World scenes, and the chat dataset built from them.

A dialogue opens with a question that picks out one object (its referent), then asks 1-2 follow-ups
that only name it as "it", "that shape" or "that one", so they cannot be answered without the
earlier turns:

    user: what is left of the square?      assistant: a red circle
    user: what size is it?                 assistant: small
    user: where is that one?               assistant: in the top left

Openings: "what colour is the X?", "what shape is the C object?", "is there a C X?" (yes),
"what is left/right of / above / below the X?". Follow-ups (about the referent): size, colour or
shape (whichever the opening did not reveal), "where is it?", "is it left of the Y?" (yes/no),
"what is left of it?" and "is it small?" (yes/no). Every answer is true of the scene.

Example:
    >>> import tempfile
    >>> from polymodal.data.shapes import write_shapes_world
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = write_shapes_world(f"{tmp.name}/shapes", n=20, image_size=32, progress=False)
    >>> dialogues = read_dialogues(folder, split="test")
    >>> for turn in dialogues[0].turns:
    ...     print(f"{turn.question:28} {turn.answer}")
    what colour is the square?   orange
    where is it?                 at the top
    is that one large?           yes
    >>> tmp.cleanup()
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from ..errors import DataError, InputError
from ..text.tokenizer import SPECIALS, Tokenizer, WordTokenizer
from .grounding import location_words
from .images import normalize
from .qa import encode_text
from .shapes import SIZES, Scene, ShapeObject
from .shapes_text import article, region, relation

USER, ASSISTANT = "<user>", "<assistant>"  # role markers: vocabulary entries no text can produce
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
Message = dict[str, str]


@dataclass
class Turn:
    question: str
    answer: str
    kind: str                         # e.g. "open/position", "follow/size"
    points: tuple[tuple[float, float], ...] = ()  # centres the reply is about, pointed at first (data/grounding.py)
    retracted: tuple[tuple[float, float], ...] = ()  # training only: a wrong point written first, then <retry>


@dataclass
class DialogueRecord:
    """A dialogue about one image.

    Example:
        >>> DialogueRecord("1-0", "/d/a.png", [Turn("what colour is the star?", "red", "open/colour")]).id
        '1-0'
    """

    id: str
    image: str
    turns: list[Turn]
    split: str | None = None


def _rel(rel: str) -> str:
    return f"{rel} of" if rel in ("left", "right") else rel


def _on_side(o: ShapeObject, b: ShapeObject, rel: str) -> bool:
    return {"left": o.x < b.x, "right": o.x > b.x, "above": o.y < b.y, "below": o.y > b.y}[rel]


def _only_on_side(objs: Sequence[ShapeObject], b: ShapeObject) -> list[tuple[ShapeObject, str]]:
    """(a, rel): a is the one object on that side of b, and clearly so (along the dominant axis)."""
    out = []
    for rel in ("left", "right", "above", "below"):
        side = [o for o in objs if o is not b and _on_side(o, b, rel)]
        if len(side) == 1 and relation(side[0], b) == rel:
            out.append((side[0], rel))
    return out


def _openings(objs: Sequence[ShapeObject]) -> dict[str, list[tuple[Turn, ShapeObject, set[str]]]]:
    """Opening turns by kind, each with its referent and the attributes the turn already revealed."""
    shapes, colours = Counter(o.shape for o in objs), Counter(o.colour for o in objs)
    pairs = Counter((o.colour, o.shape) for o in objs)
    out: dict[str, list[tuple[Turn, ShapeObject, set[str]]]] = {}
    for o in objs:
        if shapes[o.shape] == 1:
            out.setdefault("colour", []).append((Turn(f"what colour is the {o.shape}?", o.colour, "open/colour"),
                                                 o, {"colour", "shape"}))
            for a, rel in _only_on_side(objs, o):
                out.setdefault("position", []).append(
                    (Turn(f"what is {_rel(rel)} the {o.shape}?", article(f"{a.colour} {a.shape}"), "open/position",
                          (o.centre, a.centre)), a, {"colour", "shape"}))
        if colours[o.colour] == 1:
            out.setdefault("shape", []).append((Turn(f"what shape is the {o.colour} object?", o.shape, "open/shape"),
                                                o, {"colour", "shape"}))
        if pairs[(o.colour, o.shape)] == 1:
            out.setdefault("exists", []).append((Turn(f"is there {article(o.colour)} {o.shape}?", "yes", "open/exists"),
                                                 o, {"colour", "shape"}))
    return out


def _followups(o: ShapeObject, objs: Sequence[ShapeObject], known: set[str], rng: random.Random) -> list[Turn]:
    def it() -> str:
        return rng.choice(("it", "it", "that shape", "that one"))

    out = [Turn(f"what size is {it()}?", o.size, "follow/size"),
           Turn(f"where is {it()}?", region(o), "follow/where", (o.centre,))]
    if "colour" not in known:
        out.append(Turn(f"and what colour is {it()}?", o.colour, "follow/colour"))
    if "shape" not in known:
        out.append(Turn(f"what shape is {it()}?", o.shape, "follow/shape"))
    size = rng.choice(tuple(SIZES))
    out.append(Turn(f"is {it()} {size}?", "yes" if size == o.size else "no", "follow/size-yes/no"))
    shapes = Counter(x.shape for x in objs)
    others = [c for c in objs if c is not o and shapes[c.shape] == 1 and c.shape != o.shape]
    if others:
        c = rng.choice(others)
        rel, truth = relation(o, c), rng.random() < 0.5
        out.append(Turn(f"is {it()} {_rel(rel if truth else _OPPOSITE[rel])} the {c.shape}?", "yes" if truth else "no",
                        "follow/relation", (o.centre, c.centre)))
    near = _only_on_side(objs, o)
    if near:
        a, rel = rng.choice(near)
        out.append(Turn(f"what is {_rel(rel)} {it()}?", article(f"{a.colour} {a.shape}"), "follow/position",
                        (o.centre, a.centre)))
    return out


def dialogues_for_scene(scene: Scene, rng: random.Random, k: int = 2) -> list[list[Turn]]:
    """Up to k dialogues of 2-3 turns, with different opening kinds where the scene allows.

    Example:
        >>> s = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
        ...            ShapeObject("square", "blue", "large", 0.7, 0.5)), (40, 40, 40))
        >>> len(dialogues_for_scene(s, random.Random(0))[0]) in (2, 3)
        True
    """
    openings = _openings(scene.objects)
    kinds = sorted(openings)
    rng.shuffle(kinds)
    out = []
    for kind in kinds[:k]:
        first, referent, known = rng.choice(openings[kind])
        follow = _followups(referent, scene.objects, known, rng)
        rng.shuffle(follow)
        # one question per attribute: "is it small?" after "what size is it?" would be given away
        distinct = list({t.kind.split("-")[0]: t for t in reversed(follow)}.values())[::-1]
        out.append([first, *distinct[: rng.choice((1, 2))]])
    return out


def read_scenes(folder: str | Path, split: str | None = None) -> list[tuple[str, str, Scene]]:
    """(image id, image path, scene) of a Shapes World folder's scenes.jsonl, each split in index order.

    Raises:
        DataError: the folder has no readable scenes.jsonl, or a line is not a scene.
    """
    path = Path(folder) / "scenes.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        raise DataError(f"{path}: not found; write Shapes World with `polymodal data shapes --out {folder}`") from None
    counters: dict[str, int] = {}
    out = []
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            scene = Scene.from_dict(row)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path} line {n}: not a scene record ({err}); regenerate the folder") from None
        i = counters[row["split"]] = counters.get(row["split"], -1) + 1  # each split's images in index order
        if split is None or row["split"] == split:
            out.append((str(row["image_id"]), str(Path(folder) / f"images/{row['split']}/{row['split']}_{i:06d}.png"),
                        scene))
    return out


def read_dialogues(folder: str | Path, split: str | None = None, per_image: int = 2) -> list[DialogueRecord]:
    """Dialogues for the scenes of a Shapes World folder (scenes.jsonl), deterministic per image.

    Raises:
        DataError: the folder has no readable scenes.jsonl.
    """
    out = []
    for image_id, image, scene in read_scenes(folder, split):
        rng = random.Random(f"dialogue/{image_id}")
        split_name = Path(image).parent.name
        for k, turns in enumerate(dialogues_for_scene(scene, rng, per_image)):
            out.append(DialogueRecord(f"{image_id}-{k}", image, turns, split_name))
    return out


def build_chat_tokenizer(dialogues: Sequence[DialogueRecord], min_count: int = 1,
                         max_size: int = 10000, location_grid: int = 0) -> WordTokenizer:
    """Word vocabulary of every question and answer, with the two role markers after the specials, and with
    `location_grid` the location tokens replies point with (data/grounding.py) at the end."""
    texts = (text for d in dialogues for t in d.turns for text in (t.question, t.answer))
    words = WordTokenizer.build(texts, min_count=min_count, max_size=max_size).words
    return WordTokenizer([*SPECIALS, USER, ASSISTANT, *words[len(SPECIALS):], *location_words(location_grid)])


def context_ids(tokenizer: Tokenizer, messages: Sequence[Message], max_len: int) -> list[int]:
    """<user> q1 <assistant> a1 <user> q2 ... as ids, cut from the left to the newest `max_len` tokens
    (a single message longer than that keeps its first `max_len` words).

    Raises:
        InputError: no messages, an unknown role, an empty message, or a last message not from the user.

    Example:
        >>> tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what size is it?", "small", "x")])])
        >>> msgs = [{"role": "user", "content": "what size is it?"}, {"role": "assistant", "content": "small"},
        ...         {"role": "user", "content": "what size is it?"}]
        >>> tok.decode(context_ids(tok, msgs, 5))  # the oldest turns go first
        '<user> what size is it'
    """
    if not messages:
        raise InputError("no messages; pass [{'role': 'user', 'content': 'what colour is the circle?'}]")
    markers = {"user": tokenizer.index[USER], "assistant": tokenizer.index[ASSISTANT]}  # type: ignore[attr-defined]
    ids: list[int] = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in markers:
            raise InputError(f"message {i}: role must be 'user' or 'assistant', got {role!r}")
        ids += [markers[role], *encode_text(tokenizer, msg.get("content"), max_len, what=f"message {i}")]
    if messages[-1]["role"] != "user":
        raise InputError("the last message must be the user's question")
    return ids[-max_len:]


def turn_messages(turns: Sequence[Turn], t: int) -> list[Message]:
    """The messages before turn t's answer: the earlier turns (with their reference answers) and question t."""
    msgs: list[Message] = []
    for turn in turns[:t]:
        msgs += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer}]
    return [*msgs, {"role": "user", "content": turns[t].question}]


class ChatDataset(Dataset):
    """One item per assistant turn: image (or its features), context ids, answer ids <bos> ... <eos>."""

    def __init__(self, dialogues: Sequence[DialogueRecord], rows: Sequence[int], images: Callable[[int], Any],
                 tokenizer: Tokenizer, max_context: int, max_answer: int):
        self.images, self.tokenizer = images, tokenizer
        self.items = [(d, r, t) for d, r in zip(dialogues, rows, strict=True) for t in range(len(d.turns))]
        self.max_context, self.max_answer = max_context, max_answer

    def __len__(self) -> int:
        return len(self.items)

    def turn(self, i: int) -> Turn:
        d, _, t = self.items[i]
        return d.turns[t]

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, row, t = self.items[i]
        tok = self.tokenizer
        context = context_ids(tok, turn_messages(d.turns, t), self.max_context)
        answer = [tok.bos_id, *tok.encode(d.turns[t].answer, max_len=self.max_answer), tok.eos_id]
        return {"image": self.images(row), "context": torch.tensor(context), "answer": torch.tensor(answer), "index": i}


def collate_chat(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """"images" or "image_features", "tokens" (context ids), "answer_tokens", "index"."""
    images = torch.stack([it["image"] for it in items])
    key = "images" if images.dtype == torch.uint8 else "image_features"
    return {key: normalize(images) if key == "images" else images.float(),
            "tokens": pad_sequence([it["context"] for it in items], batch_first=True, padding_value=pad_id),
            "answer_tokens": pad_sequence([it["answer"] for it in items], batch_first=True,
                                          padding_value=pad_id),
            "index": torch.tensor([it["index"] for it in items])}


def dialogue_report(turns: Sequence[Turn], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match answer accuracy (after `normalize_answer`) overall, on opening turns, on follow-ups
    and per turn kind.

    Example:
        >>> dialogue_report([Turn("q", "red", "open/colour"), Turn("q", "small", "follow/size")], ["red", "large"])
        {'accuracy': 0.5, 'turns': 2, 'accuracy/turn-1': 1.0, 'accuracy/follow-up': 0.0, 'accuracy/follow/size': 0.0, 'accuracy/open/colour': 1.0}
    """
    from ..text.answers import normalize_answer

    hits: dict[str, list[bool]] = {}
    for turn, pred in zip(turns, predictions, strict=True):
        ok = normalize_answer(pred) == normalize_answer(turn.answer)
        group = "turn-1" if turn.kind.startswith("open/") else "follow-up"
        for key in ("all", group, turn.kind):
            hits.setdefault(key, []).append(ok)
    out: dict[str, float] = {"accuracy": _mean(hits.get("all", [])), "turns": len(turns)}
    for key in ("turn-1", "follow-up", *sorted(k for k in hits if "/" in k)):
        if key in hits:
            out[f"accuracy/{key}"] = _mean(hits[key])
    return out


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / max(len(values), 1)
