"""Score an instruction assistant: per-kind accuracy, follow-ups, declines, POPE and its captions.

Every request is asked with the reference conversation before it (follow-ups see the earlier turns with
their true answers), replies are greedy, and a reply is right when it equals the reference after
`normalize_answer`. "describe" replies are captions, scored by CIDEr-D against the image's references and
by CHAIR-i (eval/hallucination.py); "absent" and "scope" requests count as declined when the reply
declines (`data.instructions.is_decline`).

Example:
    >>> q = [Query("a.png", [{"role": "user", "content": "tell me a joke"}], "scope", "i can only ...")]
    >>> kind_report(q, ["i can only answer questions about this image"])["decline/scope"]
    1.0
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.dialogue import Message, dialogues_for_scene, read_scenes, turn_messages
from ..data.grounding import Point, location_grid, retry_id, split_locations
from ..data.images import normalize
from ..data.instructions import (
    DECLINE_SCOPE,
    INSTRUCTION_KINDS,
    SCOPE_EVAL,
    InstructionConfig,
    is_decline,
)
from ..data.shapes import Scene
from ..generate import GenerationConfig
from ..text.answers import normalize_answer
from .pope import ObjectStats, pope_metrics, pope_questions

DECLINE_KINDS = ("absent", "scope", "scope/unseen")


@dataclass
class Query:
    """One request to score: the image, the messages up to it, its kind and the reference reply."""

    image: str
    messages: list[Message]
    kind: str
    answer: str
    image_id: str = ""
    references: list[str] = field(default_factory=list)
    points: tuple[Point, ...] = ()    # the centres a pointing reply should point at first (data/grounding.py)


def single(image: str, question: str, kind: str, answer: str, image_id: str = "") -> Query:
    return Query(image, [{"role": "user", "content": question}], kind, answer, image_id)


def scene_queries(scenes: Sequence[tuple[str, str, Scene]], captions: dict[str, list[str]],
                  seed: int = 0) -> list[Query]:
    """Per image one request of every kind (no pair avoided: held-out pairs may be asked about), a
    dialogue with follow-ups, and an out-of-scope request in a phrasing never trained on."""
    cfg = InstructionConfig(avoid_pairs=[])
    out = []
    for image_id, image, scene in scenes:
        rng = random.Random(f"eval/{seed}/{image_id}")
        refs = captions.get(image_id, [])
        for kind, build in INSTRUCTION_KINDS.items():
            turn = build(scene, refs, rng, cfg)
            if turn is not None:
                out.append(Query(image, [{"role": "user", "content": turn.question}], turn.kind, turn.answer,
                                 image_id, refs if kind == "describe" else [], turn.points))
        out.append(single(image, rng.choice(SCOPE_EVAL), "scope/unseen", DECLINE_SCOPE, image_id))
        for turns in dialogues_for_scene(scene, rng, 1):
            out += [Query(image, turn_messages(turns, t), turns[t].kind, turns[t].answer, image_id, [], turns[t].points)
                    for t in range(len(turns))]
    return out


def long_queries(scenes: Sequence[tuple[str, str, Scene]], captions: dict[str, list[str]], earlier: int = 6,
                 seed: int = 0) -> list[Query]:
    """Per image one request (any kind but describe) after `earlier` others with their true replies: a conversation
    longer than the instruction mixture's (3 turns at most), as a user who goes on chatting makes it.

    Example:
        >>> from polymodal.data.shapes import ShapeObject
        >>> scene = Scene((ShapeObject("circle", "red", "small", 0.2, 0.5),), (40, 40, 40))
        >>> q = long_queries([("0", "a.png", scene)], {"0": ["a small red circle"]}, earlier=4)[0]
        >>> len(q.messages), q.messages[-1]["role"]
        (9, 'user')
    """
    cfg = InstructionConfig(avoid_pairs=[])
    kinds = [k for k in INSTRUCTION_KINDS if k != "describe"]
    out = []
    for image_id, image, scene in scenes:
        rng, turns = random.Random(f"long/{seed}/{image_id}"), []
        while len(turns) <= earlier:
            turn = INSTRUCTION_KINDS[rng.choice(kinds)](scene, captions.get(image_id, []), rng, cfg)
            turns += [turn] if turn is not None else []
        last = turns[-1]
        out.append(Query(image, turn_messages(turns, earlier), last.kind, last.answer, image_id, [], last.points))
    return out


@torch.inference_mode()
def run_queries(model: Any, queries: Sequence[Query], image: Callable[[str], torch.Tensor],
                batch_size: int = 128, progress: bool = True, generation: GenerationConfig | None = None) -> list[str]:
    """Replies of `model` (an InstructionAssistant) to every query, greedy unless `generation` says otherwise;
    `image(path)` gives uint8 (3, S, S)."""
    ids, _ = reply_ids(model, queries, image, batch_size, progress, score=False, generation=generation)
    return [model.reply_text(r) for r in ids]


@torch.inference_mode()
def pointed_queries(model: Any, queries: Sequence[Query], image: Callable[[str], torch.Tensor],
                    progress: bool = True) -> tuple[list[str], list[list[Point]], list[list[int]]]:
    """Greedy replies to every query, in words, the points each reply wrote first (data/grounding.py), and the
    replies' ids (location tokens and any <retry> included)."""
    ids, _ = reply_ids(model, queries, image, progress=progress)
    parts = [model.reply_parts(r) for r in ids]
    return [words for words, _ in parts], [points for _, points in parts], ids


@torch.inference_mode()
def scored_queries(model: Any, queries: Sequence[Query], image: Callable[[str], torch.Tensor],
                   batch_size: int = 128, progress: bool = True, score: bool = True,
                   generation: GenerationConfig | None = None) -> tuple[list[str], Any]:
    """Greedy replies to every query and, with `score`, the logits behind them (models.reply_confidence.ReplyScores,
    reply i = query i) from which `confidence(T)` gives each reply's probability under any temperature."""
    ids, scores = reply_ids(model, queries, image, batch_size, progress, score, generation)
    return [model.reply_text(r) for r in ids], scores


@torch.inference_mode()
def reply_ids(model: Any, queries: Sequence[Query], image: Callable[[str], torch.Tensor], batch_size: int = 128,
              progress: bool = True, score: bool = False,
              generation: GenerationConfig | None = None) -> tuple[list[list[int]], Any]:
    """The reply ids to every query (location tokens included) and, with `score`, their ReplyScores."""
    from ..models.reply_confidence import ReplyScores

    order = sorted(range(len(queries)), key=lambda i: (queries[i].kind == "describe", i))  # similar lengths together
    ids: list[list[int]] = [[] for _ in queries]
    parts = []
    for start in tqdm(range(0, len(order), batch_size), desc="replies", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        images = normalize(torch.stack([image(queries[i].image) for i in rows])).to(model.device)
        prompts = [model.prompt_ids(queries[i].messages) for i in rows]
        said = model.reply_ids(images, prompts, generation)
        for i, reply in zip(rows, said, strict=True):
            ids[i] = reply
        if score:
            parts.append(model.score(images, prompts, said))
    if not score:
        return ids, None
    scores = ReplyScores.cat(parts)
    scores.reply = torch.tensor(order)[scores.reply]  # batch order -> query order
    return ids, scores


def pointed_right(truth: Sequence[Point], pointed: Sequence[Point], grid: int) -> bool:
    """Whether a reply pointed at every object it is about, in order: as many points as the truth, each in the
    true centre's cell or the one beside it (a centre near a cell edge may fall either way).

    Example:
        >>> pointed_right([(0.2, 0.5)], [(2.5 / 12, 6.5 / 12)], 12), pointed_right([(0.2, 0.5)], [], 12)
        (True, False)
    """
    return len(truth) == len(pointed) and all(
        abs(int(t * grid) - int(p * grid)) <= 1 for a, b in zip(truth, pointed, strict=True) for t, p in zip(a, b, strict=True))


def pointing_report(queries: Sequence[Query], pointed: Sequence[Sequence[Point]], grid: int) -> dict[str, float]:
    """pointing/<kind>: the share of the replies that should point (their query has points) that pointed right,
    and pointing/all over every such reply; {} for a model without location tokens."""
    if not grid:
        return {}
    hits: dict[str, list[bool]] = {}
    for q, said in zip(queries, pointed, strict=True):
        if q.points:
            right = pointed_right(q.points, said, grid)
            hits.setdefault(f"pointing/{q.kind}", []).append(right)
            hits.setdefault("pointing/all", []).append(right)
    return {key: sum(v) / len(v) for key, v in sorted(hits.items())}


def retry_report(queries: Sequence[Query], ids: Sequence[Sequence[int]], tokenizer: Any) -> dict[str, float]:
    """How a model trained to take a point back (data/grounding.py, <retry>) used it, over the replies that should
    point: retry/share, those that took a point back; of those, retry/first_right, those whose taken-back points
    were right after all, and retry/final_right, those whose final points are right. {} for a model without it."""
    retry, grid = retry_id(tokenizer), location_grid(tokenizer)
    if retry is None or not grid:
        return {}
    pointing = [(q, list(r)) for q, r in zip(queries, ids, strict=True) if q.points]
    retried = [(q, r) for q, r in pointing if retry in r]
    out = {"retry/share": len(retried) / max(len(pointing), 1)}
    if retried:
        before = [r[: len(r) - 1 - r[::-1].index(retry)] for _, r in retried]  # what the last <retry> took back
        for name, replies in (("retry/first_right", before), ("retry/final_right", [r for _, r in retried])):
            out[name] = sum(pointed_right(q.points, split_locations(tokenizer, r)[1], grid)
                            for (q, _), r in zip(retried, replies, strict=True)) / len(retried)
    return out


def listed(text: str) -> list[str]:
    """The items of a list reply, sorted: "a, b and c" -> [a, b, c] (a list asks for no order).

    Example:
        >>> listed("a small red circle, a large blue square and a small red circle")
        ['large blue square', 'small red circle', 'small red circle']
    """
    head, _, last = text.strip().lower().rpartition(" and ")
    return sorted(filter(None, (normalize_answer(p) for p in [*(head.split(",") if head else []), last])))


def same_reply(kind: str, reply: str, answer: str) -> bool:
    """Whether a reply says the reference answer: equal after `normalize_answer`; a "list" or "region" reply may
    name the same objects in another order.

    Example:
        >>> same_reply("list", "a blue square and a red circle", "a red circle and a blue square")
        True
        >>> same_reply("colour", "Red.", "red"), same_reply("count", "two", "three")
        (True, False)
    """
    if kind in ("list", "region"):
        return listed(reply) == listed(answer)
    return normalize_answer(reply) == normalize_answer(answer)


def reply_correct(query: Query, reply: str) -> bool:
    """Whether a reply is right (`same_reply`); a "describe" reply may equal any of the image's reference
    captions (kind_report counts only the first; captions have many right answers).

    Example:
        >>> reply_correct(Query("a.png", [], "describe", "a red circle", references=["a small red circle"]),
        ...               "a small red circle")
        True
    """
    said = normalize_answer(reply)
    return same_reply(query.kind, reply, query.answer) or any(said == normalize_answer(r) for r in query.references)


def kind_report(queries: Sequence[Query], replies: Sequence[str]) -> dict[str, float]:
    """accuracy/<kind> for every kind, accuracy/follow-up (all follow/ turns), decline/<kind> for declines,
    and false_decline: answerable requests (not describe) that were declined."""
    hits: dict[str, list[bool]] = {}
    for q, reply in zip(queries, replies, strict=True):
        hits.setdefault(f"accuracy/{q.kind}", []).append(same_reply(q.kind, reply, q.answer))
        if q.kind.startswith("follow/"):
            hits.setdefault("accuracy/follow-up", []).append(hits[f"accuracy/{q.kind}"][-1])
        if q.kind in DECLINE_KINDS:
            hits.setdefault(f"decline/{q.kind}", []).append(is_decline(reply))
        elif q.kind != "describe" and not is_decline(q.answer):  # "there is no shape in the top left" is right
            hits.setdefault("false_decline", []).append(is_decline(reply))
    return {key: sum(v) / len(v) for key, v in sorted(hits.items())}


def caption_report(queries: Sequence[Query], replies: Sequence[str], objects: Any | None = None) -> dict[str, float]:
    """CIDEr-D (PTB tokenizer) of the "describe" replies, and CHAIR-i / CHAIR-s with `objects` (ObjectTruth)."""
    from .caption_metrics import caption_metrics

    results = {q.image_id: r for q, r in zip(queries, replies, strict=True) if q.kind == "describe" and q.references}
    if not results:
        return {}
    refs = {q.image_id: q.references for q in queries if q.kind == "describe" and q.references}
    out = {"cider": caption_metrics(results, refs)["cider"], "captions": len(results)}
    if objects is not None:
        scores = objects.score(results)
        out |= {"chair_i": scores["chair_i"], "chair_s": scores["chair_s"]}
    return out


def pope_report(model: Any, scenes: Sequence[tuple[str, str, Scene]], stats: ObjectStats,
                image: Callable[[str], torch.Tensor], per_image: int = 3, progress: bool = True) -> dict[str, dict]:
    """POPE metrics per negative sampling (eval/pope.py) of `model` on these scenes."""
    out = {}
    for sampling in ("random", "popular", "adversarial"):
        questions = pope_questions(scenes, sampling, stats, per_image)
        queries = [single(q.image, q.question, "pope", "") for q in questions]
        out[sampling] = pope_metrics([q.truth for q in questions], run_queries(model, queries, image,
                                                                               progress=progress))
    return out


def assistant_report(model: Any, folder: str | Path, split: str, captions: dict[str, list[str]],
                     image: Callable[[str], torch.Tensor], limit: int = 0, stats: ObjectStats | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Everything above on one split of a Shapes World folder (its first `limit` images; 0 = all)."""
    from .hallucination import ObjectTruth

    scenes = read_scenes(folder, split)[: limit or None]
    queries = scene_queries(scenes, captions)
    replies, pointed, ids = pointed_queries(model, queries, image, progress)
    out: dict[str, Any] = {"images": len(scenes), **kind_report(queries, replies),
                           **pointing_report(queries, pointed, location_grid(model.tokenizer)),
                           **retry_report(queries, ids, model.tokenizer),
                           "caption": caption_report(queries, replies, ObjectTruth.shapes(folder))}
    if stats is not None:
        out["pope"] = pope_report(model, scenes, stats, image, progress=progress)
    return out


__all__ = ["Query", "assistant_report", "caption_report", "kind_report", "pointed_right", "pointing_report",
           "pope_report", "reply_correct", "reply_ids", "retry_report", "run_queries", "same_reply", "scene_queries",
           "scored_queries"]
