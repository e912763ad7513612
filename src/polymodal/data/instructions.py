"""An instruction mixture for one assistant: conversations about images, built from what the readers give.

From Shapes World scenes (objects known exactly) every kind below; from any captioned dataset "describe
the image"; from any VQA JSON / JSONL file its questions as they are (`conversations_from_captions`,
`conversations_from_qa`). Each kind is a builder `(scene, captions, rng, cfg) -> Turn | None` in
`INSTRUCTION_KINDS`:

    describe   "describe the image"                  -> a reference caption
    list       "list the objects"                    -> "a small red circle and a large blue square"
    count      "how many shapes are there?"          -> "two"  (also "how many circles ...", "zero" if none)
    colour     "what colour is the circle?"          -> "red"  (asked only of a shape the scene has once)
    shape      "what shape is the red object?"       -> "circle"
    size       "what size is the red circle?"        -> "small"
    position   "where is the red circle?"            -> "on the left"; "is the red circle left of ...?"
    exists     "is there a green star?"              -> "yes" / "no", half of the negatives near misses
    absent     "what colour is the star?" (no star)  -> "there is no star in the image"
    scope      "tell me a joke", words it never saw  -> "i can only answer questions about this image"

Multi-turn follow-ups ("what size is it?") are the dialogues of data/dialogue.py, kinds "open/..." and
"follow/...". Held-out colour-shape pairs are never named in a negative ("is there a red square?" -> no),
so the held-out split tests composition, not a learned "never".

Example:
    >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),
    ...                ShapeObject("square", "blue", "large", 0.7, 0.5)), (40, 40, 40))
    >>> turn = INSTRUCTION_KINDS["absent"](scene, [], random.Random(1), InstructionConfig())
    >>> turn.answer.startswith("there is no"), turn.kind
    (True, 'absent')
    >>> INSTRUCTION_KINDS["count"](scene, [], random.Random(0), InstructionConfig()).answer in ("two", "one", "zero")
    True
"""

from __future__ import annotations

import math
import random
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..text.tokenizer import Tokenizer
from .chat_template import MAX_WORDS, markers, prompt, render
from .dialogue import DialogueRecord, Turn, dialogues_for_scene, read_scenes, turn_messages
from .grounding import location_grid, location_ids
from .images import normalize
from .qa import QARecord
from .records import CaptionRecord
from .shapes import COLOURS, HELDOUT_PAIRS, SHAPES, Scene, ShapeObject
from .shapes_text import NUMBER_WORDS, REGIONS, article, left_to_right, noun, region, relation

DECLINE_SCOPE = "i can only answer questions about this image"
DECLINE_MARKERS = ("there is no", "i can only")
DESCRIBE = ("describe the image", "what do you see?", "describe this picture", "what is in the image?",
            "give a caption for the image")
LIST = ("list the objects", "what objects are in the image?", "name every shape in the image")
COUNT = ("how many shapes are there?", "how many objects are in the image?", "count the shapes")
# Requests it cannot serve; SCOPE_EVAL holds phrasings never trained on, for the benchmark.
SCOPE = ("tell me a joke", "what is the capital of france?", "write a poem about the sea", "what time is it?",
         "what is the weather like today?", "who won the football game?", "can you book a flight for me?",
         "what is two plus two?", "translate hello into french", "what is your name?", "sing me a song",
         "how do i cook pasta?", "what is the meaning of life?", "recommend a good movie", "who are you?",
         "tell me about the history of rome", "what colour is the sky?", "how old are you?",
         "write some python code", "what is the best car to buy?")
SCOPE_EVAL = ("tell me a story", "what is the capital of spain?", "who is the president?", "write a haiku",
              "how tall is mount everest?", "what should i eat tonight?", "explain quantum physics",
              "¿qué hora es?", "quelle est la couleur du ciel?", "wie spät ist es?")
_REL_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def is_decline(reply: str) -> bool:
    """Whether a reply declines ("there is no star in the image", "i can only answer ...")."""
    return reply.strip().lower().startswith(DECLINE_MARKERS)


def absent_reply(thing: str) -> str:
    """The honest reply to a question about something the image does not have."""
    return f"there is no {thing} in the image"


@dataclass
class InstructionConfig:
    conversations_per_image: int = 4
    max_turns: int = 3                # independent requests packed into one conversation
    dialogue_share: float = 0.3       # conversations that are multi-turn dialogues with follow-ups
    unknown_words_share: float = 0.3  # out-of-scope requests made of words it never saw (any language)
    weights: dict[str, float] = field(default_factory=lambda: {
        "describe": 1.5, "list": 0.7, "count": 1.2, "colour": 1.0, "shape": 1.0, "size": 0.8, "position": 1.0,
        "exists": 2.0, "absent": 1.2, "scope": 0.8, "region": 1.0})
    avoid_pairs: list[list[str]] = field(default_factory=lambda: [list(p) for p in HELDOUT_PAIRS])
    location_grid: int = 12           # position, relation and count replies point first, on this many cells a side
                                      # (data/grounding.py; 12 puts the thirds that "in the top left" names on
                                      # cell edges); 0 = replies in words only
    retry_share: float = 0.0          # pointing replies that first point at another object, then <retry> and the
                                      # right point (data/grounding.py); the model learns to take a wrong point back


Builder = Callable[[Scene, Sequence[str], random.Random, InstructionConfig], Turn | None]


def _unique(objs: Sequence[ShapeObject], key: Callable[[ShapeObject], object]) -> list[ShapeObject]:
    counts = Counter(key(o) for o in objs)
    return [o for o in objs if counts[key(o)] == 1]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _absent_pairs(scene: Scene, cfg: InstructionConfig) -> list[tuple[str, str]]:
    present = {(o.colour, o.shape) for o in scene.objects}
    avoid = {tuple(p) for p in cfg.avoid_pairs}
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and (c, s) not in avoid]


def _describe(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    return Turn(rng.choice(DESCRIBE), rng.choice(list(captions)), "describe") if captions else None


def _list(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    return Turn(rng.choice(LIST), _join([noun(o) for o in left_to_right(scene.objects)]), "list")


def _count(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    objs, ask, counted = scene.objects, rng.choice(COUNT), lambda o: True
    if rng.random() >= 0.6:
        if rng.random() < 0.5:
            shape = rng.choice([o.shape for o in objs] + list(SHAPES))
            ask, counted = f"how many {shape}s are there?", lambda o: o.shape == shape
        else:
            colour = rng.choice([o.colour for o in objs] + list(COLOURS))
            ask, counted = f"how many {colour} shapes are there?", lambda o: o.colour == colour
    found = [o for o in left_to_right(objs) if counted(o)]  # pointed at in reading order, then counted
    return Turn(ask, NUMBER_WORDS[len(found)], "count", tuple(o.centre for o in found))


def _colour(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    named = _unique(scene.objects, lambda o: o.shape)
    o = rng.choice(named) if named else None
    return Turn(f"what colour is the {o.shape}?", o.colour, "colour") if o else None


def _shape(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    named = _unique(scene.objects, lambda o: o.colour)
    o = rng.choice(named) if named else None
    return Turn(f"what shape is the {o.colour} object?", o.shape, "shape") if o else None


def _size(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    named = _unique(scene.objects, lambda o: (o.colour, o.shape))
    if not named:
        return None
    o = rng.choice(named)
    ask = rng.choice((f"what size is the {o.colour} {o.shape}?", f"is the {o.colour} {o.shape} small or large?"))
    return Turn(ask, o.size, "size")


def _position(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    named = _unique(scene.objects, lambda o: (o.colour, o.shape))
    if not named:
        return None
    a = rng.choice(named)
    others = [b for b in named if b is not a]
    if not others or rng.random() < 0.5:
        # "where is the circle?" too, when it is the only one: asked only of absent shapes, it was declined
        alone = sum(o.shape == a.shape for o in scene.objects) == 1
        name = a.shape if alone and rng.random() < 0.4 else f"{a.colour} {a.shape}"
        return Turn(f"where is the {name}?", region(a), "position", (a.centre,))
    b = rng.choice(others)
    rel, truth = relation(a, b), rng.random() < 0.5
    asked = _REL_WORDS[rel if truth else _OPPOSITE[rel]]
    return Turn(f"is the {a.colour} {a.shape} {asked} the {b.colour} {b.shape}?", "yes" if truth else "no", "position",
                (a.centre, b.centre))


def _exists(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    tail = rng.choice(("", " in the image"))
    if rng.random() < 0.5:
        o = rng.choice(scene.objects)
        return Turn(f"is there {article(o.colour)} {o.shape}{tail}?", "yes", "exists")
    absent = _absent_pairs(scene, cfg)
    near = [(c, s) for c, s in absent if any(c == o.colour or s == o.shape for o in scene.objects)]
    colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
    return Turn(f"is there {article(colour)} {shape}{tail}?", "no", "exists")


def _absent(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    shapes, colours = {o.shape for o in scene.objects}, {o.colour for o in scene.objects}
    pick = rng.random()
    if pick < 0.35 and len(shapes) < len(SHAPES):
        shape = rng.choice([s for s in SHAPES if s not in shapes])
        return Turn(rng.choice((f"what colour is the {shape}?", f"where is the {shape}?")), absent_reply(shape),
                    "absent")
    if pick < 0.6 and len(colours) < len(COLOURS):
        colour = rng.choice([c for c in COLOURS if c not in colours])
        return Turn(f"what shape is the {colour} object?", absent_reply(f"{colour} object"), "absent")
    colour, shape = rng.choice(_absent_pairs(scene, cfg))
    ask = rng.choice((f"what size is the {colour} {shape}?", f"where is the {colour} {shape}?"))
    return Turn(ask, absent_reply(f"{colour} {shape}"), "absent")


def _region(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    """A request that refers to a region ("what is in the top left?"): the objects whose centres are in that ninth
    of the image, pointed at first and named in reading order, or "there is no shape in the top left"."""
    held = {p: [o for o in left_to_right(scene.objects) if region(o) == p] for p in REGIONS}
    full, empty = [p for p in REGIONS if held[p]], [p for p in REGIONS if not held[p]]
    phrase = rng.choice(empty if empty and (not full or rng.random() < 0.3) else full)
    found = held[phrase]
    reply = _join([noun(o) for o in found]) if found else f"there is no shape {phrase}"
    return Turn(rng.choice((f"what is {phrase}?", f"what shapes are {phrase}?")), reply, "region",
                tuple(o.centre for o in found))


def unknown_words(rng: random.Random) -> str:
    """A request in words no vocabulary has (what a foreign language or a typo storm looks like to it)."""
    letters = string.ascii_lowercase + "áéíóúñüçß"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(1, 7))]
    return " ".join(words) + rng.choice(("", "?", "!"))


def _scope(scene: Scene, captions: Sequence[str], rng: random.Random, cfg: InstructionConfig) -> Turn | None:
    text = unknown_words(rng) if rng.random() < cfg.unknown_words_share else rng.choice(SCOPE)
    return Turn(text, DECLINE_SCOPE, "scope")


INSTRUCTION_KINDS: dict[str, Builder] = {
    "describe": _describe, "list": _list, "count": _count, "colour": _colour, "shape": _shape, "size": _size,
    "position": _position, "exists": _exists, "absent": _absent, "scope": _scope, "region": _region,
}


def conversations_for_scene(scene: Scene, captions: Sequence[str], rng: random.Random,
                            cfg: InstructionConfig) -> list[list[Turn]]:
    """`cfg.conversations_per_image` conversations: a dialogue with follow-ups, or 1..max_turns requests."""
    kinds = [k for k in cfg.weights if k in INSTRUCTION_KINDS]
    weights = [cfg.weights[k] for k in kinds]
    out = []
    for _ in range(cfg.conversations_per_image):
        if rng.random() < cfg.dialogue_share:
            dialogue = dialogues_for_scene(scene, rng, 1)
            if dialogue:
                out.append(dialogue[0])
                continue
        turns = [INSTRUCTION_KINDS[k](scene, captions, rng, cfg)
                 for k in rng.choices(kinds, weights, k=rng.randint(1, cfg.max_turns))]
        turns = [t for t in turns if t is not None]
        if turns:
            out.append(turns)
    if cfg.retry_share:
        out = [[with_retry(t, scene, rng) if rng.random() < cfg.retry_share else t for t in turns] for turns in out]
    return out


def with_retry(turn: Turn, scene: Scene, rng: random.Random) -> Turn:
    """`turn` pointing first at another object than its first point's, one most like it (its colour or its shape:
    the look-alike a wrong point lands on), then taking it back (data/grounding.py); as it is without points or
    another object.

    Example:
        >>> from polymodal.data.shapes import ShapeObject
        >>> red, blue = ShapeObject("circle", "red", "large", 0.2, 0.2), ShapeObject("circle", "blue", "small", 0.8, 0.8)
        >>> with_retry(Turn("where is the red circle?", "in the top left", "position", (red.centre,)),
        ...            Scene((red, blue), (40, 40, 40)), random.Random(0)).retracted == (blue.centre,)
        True
    """
    others = [o for o in scene.objects if all(math.dist(o.centre, p) > 1e-6 for p in turn.points)]
    if not turn.points or not others:
        return turn
    first = min(scene.objects, key=lambda o: math.dist(o.centre, turn.points[0]))
    alike = [o for o in others if o.colour == first.colour or o.shape == first.shape]
    return replace(turn, retracted=(rng.choice(alike or others).centre,))


def conversations_from_scenes(folder: str | Path, split: str, captions: dict[str, list[str]],
                              cfg: InstructionConfig) -> list[DialogueRecord]:
    """The mixture for one split of a Shapes World folder; `captions` maps image id -> references.

    Deterministic per image (its rng is seeded by the image id), whatever else the split holds.
    """
    out = []
    for image_id, image, scene in read_scenes(folder, split):
        rng = random.Random(f"instructions/{image_id}")
        for k, turns in enumerate(conversations_for_scene(scene, captions.get(image_id, []), rng, cfg)):
            out.append(DialogueRecord(f"{image_id}-{k}", image, turns, split))
    return out


def conversations_from_captions(records: Sequence[CaptionRecord], seed: int = 0) -> list[DialogueRecord]:
    """One "describe the image" conversation per captioned image (any caption format the readers take)."""
    rng = random.Random(seed)
    return [DialogueRecord(f"{r.id}-describe", r.image, [Turn(rng.choice(DESCRIBE), rng.choice(r.captions), "describe")],
                           r.split) for r in records if r.captions]


def conversations_from_qa(records: Sequence[QARecord]) -> list[DialogueRecord]:
    """One single-turn conversation per VQA question; the kind is the record's type ("vqa" without one)."""
    return [DialogueRecord(f"{r.id}-qa", r.image, [Turn(r.question, r.answers[0], r.type or "vqa")], r.split)
            for r in records if r.answers]


class InstructionDataset(Dataset):
    """One item per conversation: its image (uint8, from an ImageBank-like `images(row)`), the rendered ids
    (`chat_template.render`) cut to `max_len`, and the targets: the next id where it carries loss, else <pad>.

    `per_turn`: one item per reply instead, the conversation up to it as the prompt (oldest turns dropped to
    fit `max_len`) and loss on that reply alone, with "prefix_len", the ids before its <assistant>: what a
    model with a bidirectional prefix reads both ways, exactly as it is asked at inference.

    Example:
        >>> from polymodal.data.dialogue import build_chat_tokenizer
        >>> convs = [DialogueRecord("0", "a.png", [Turn("what colour is the star?", "red", "colour")])]
        >>> tok = build_chat_tokenizer(convs)
        >>> item = InstructionDataset(convs, [0], lambda row: torch.zeros(3, 8, 8, dtype=torch.uint8), tok, 32)[0]
        >>> tok.decode(item["tokens"]), [tok.words[i] for i in item["targets"] if i != tok.pad_id]
        ('<user> what colour is the star <assistant> red', ['red', '<eos>'])
    """

    def __init__(self, conversations: Sequence[DialogueRecord], rows: Sequence[int],
                 images: Callable[[int], torch.Tensor], tokenizer: Tokenizer, max_len: int, per_turn: bool = False):
        self.conversations, self.rows, self.images = list(conversations), list(rows), images
        self.tokenizer, self.max_len, self.per_turn = tokenizer, max_len, per_turn
        # A whole conversation is one item; with location tokens, a reply that points and is not the last is
        # learnt in an item of its own that ends there (in the whole one it is context, sent back unpointed).
        grounded = location_grid(tokenizer) > 0
        self.items = [(c, t) for c, d in enumerate(self.conversations)
                      for t in (range(len(d.turns)) if per_turn else
                                [k for k, turn in enumerate(d.turns) if k == len(d.turns) - 1
                                 or (grounded and turn.points)])]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, t = self.items[i]
        turns, tok = self.conversations[c].turns, self.tokenizer
        if not self.per_turn:
            ids, loss = render(tok, turns[: t + 1])
            return self._item(c, ids[: self.max_len], loss[: self.max_len])
        reply = [markers(tok)[1], *location_ids(tok, turns[t].points), *tok.encode(turns[t].answer, max_len=MAX_WORDS),
                 tok.eos_id]
        asked = prompt(tok, turn_messages(turns, t), self.max_len - len(reply)).ids  # trimmed as at inference
        ids = (asked + reply)[: self.max_len]
        item = self._item(c, ids, [k > len(asked) for k in range(len(ids))])  # loss after its <assistant>
        return item | {"prefix_len": torch.tensor(len(asked))}

    def _item(self, c: int, ids: list[int], loss: list[bool]) -> dict[str, torch.Tensor]:
        targets = [t if keep else self.tokenizer.pad_id for t, keep in zip(ids[1:], loss[1:], strict=True)]
        return {"image": self.images(self.rows[c]), "tokens": torch.tensor(ids), "targets": torch.tensor(targets)}


def collate_instructions(items: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """"images" (normalised), "tokens" (B, L) and "targets" (B, L - 1), right-padded with <pad>."""
    width = max(len(it["tokens"]) for it in items)
    tokens = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width - 1), pad_id, dtype=torch.long)
    for r, it in enumerate(items):
        tokens[r, : len(it["tokens"])] = it["tokens"]
        targets[r, : len(it["targets"])] = it["targets"]
    out = {"images": normalize(torch.stack([it["image"] for it in items])), "tokens": tokens, "targets": targets}
    if "prefix_len" in items[0]:  # per-turn items: where each prompt ends
        out["prefix_len"] = torch.stack([it["prefix_len"] for it in items])
    return out
