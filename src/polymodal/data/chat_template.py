"""The chat template of the instruction assistant: a conversation as one token sequence with role markers.

    <user> q1 <assistant> a1 <eos> <user> q2 <assistant> a2 <eos>

Training sees the whole sequence; only the assistant's words and the <eos> that closes each reply carry
loss (`render`). At inference the prompt is everything up to the last user question (`prompt`), and
decoding starts from `<assistant>` and stops at `<eos>`. The markers are the chat model's (data/dialogue.py),
so one word tokenizer with `build_chat_tokenizer` serves both.

Example:
    >>> from polymodal.data.dialogue import DialogueRecord, Turn, build_chat_tokenizer
    >>> tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what colour is it?", "red", "x")])])
    >>> ids, loss = render(tok, [Turn("what colour is it?", "red", "x")])
    >>> tok.decode(ids), [tok.words[i] for i, keep in zip(ids, loss) if keep]
    ('<user> what colour is it <assistant> red', ['red', '<eos>'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..text.tokenizer import Tokenizer
from .dialogue import ASSISTANT, USER, Message, Turn
from .grounding import location_grid, location_ids, retry_id
from .qa import encode_text

ROLES = ("user", "assistant")
MAX_WORDS = 48  # a longer message keeps its first words


def markers(tokenizer: Tokenizer) -> tuple[int, int]:
    """Ids of `<user>` and `<assistant>`; InputError-free: a tokenizer without them is a programming error."""
    index = tokenizer.index  # type: ignore[attr-defined]
    return index[USER], index[ASSISTANT]


def render(tokenizer: Tokenizer, turns: Sequence[Turn], max_words: int = MAX_WORDS) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and, per id, whether it is a target the loss is taken on
    (the id is predicted from the ones before it: reply words and the <eos> that ends each reply).

    With location tokens in the tokenizer (data/grounding.py) the last reply points at its `points` first; an
    earlier reply with points is rendered as a user sends it back, without them, and carries no loss (its
    words alone would teach the model to leave the pointing out). A last reply with `retracted` points, and a
    tokenizer with `<retry>`, writes them first, then `<retry>`: no loss on the wrong points, loss from `<retry>` on."""
    user, assistant = markers(tokenizer)
    grounded, retry = location_grid(tokenizer) > 0, retry_id(tokenizer)
    ids: list[int] = []
    loss: list[bool] = []
    for k, turn in enumerate(turns):
        question = [user, *tokenizer.encode(turn.question, max_len=max_words)]
        last = grounded and k == len(turns) - 1
        wrong = location_ids(tokenizer, turn.retracted) + [retry] if last and turn.retracted and retry is not None \
            else []
        pointing = location_ids(tokenizer, turn.points) if last else []
        reply = [*pointing, *tokenizer.encode(turn.answer, max_len=max_words), tokenizer.eos_id]
        ids += [*question, assistant, *wrong, *reply]
        learn = not (grounded and turn.points) or k == len(turns) - 1
        loss += [False] * (len(question) + 1) + [False] * (len(wrong) - 1) + [learn] * (len(reply) + bool(wrong))
    return ids, loss


@dataclass
class Prompt:
    """The ids to prefill (up to the last question; decoding starts at `<assistant>`), and how many of the
    conversation's messages had to be dropped (oldest first) or cut to fit the model's positions."""

    ids: list[int]
    dropped: int = 0
    cut: bool = False


def _message_ids(tokenizer: Tokenizer, messages: Sequence[Message], max_words: int) -> list[list[int]]:
    """Each message as ids with its marker (and the <eos> closing a reply); checks roles and text."""
    if not messages:
        raise InputError("no messages; pass [{'role': 'user', 'content': 'what colour is the circle?'}]")
    user, assistant = markers(tokenizer)
    out = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            raise InputError(f"message {i}: role must be 'user' or 'assistant', got {role!r}")
        words = encode_text(tokenizer, msg.get("content"), max_words, what=f"message {i}")
        out.append([user, *words] if role == "user" else [assistant, *words, tokenizer.eos_id])
    if messages[-1].get("role") != "user":
        raise InputError("the last message must be the user's question")
    return out


def prompt(tokenizer: Tokenizer, messages: Sequence[Message], budget: int, max_words: int = MAX_WORDS,
           max_earlier_turns: int = 0) -> Prompt:
    """The prompt for the reply to the last user message, at most `budget` ids.

    Older messages go first, whole, until the rest fits; a last question longer than the budget keeps its
    first words. `max_earlier_turns` > 0 also keeps at most that many earlier turns (question and reply): a
    model trained on short conversations answers far worse after more turns than it ever saw. Raises InputError
    for no messages, an empty one, an unknown role or a last message that is not the user's.

    Example:
        >>> from polymodal.data.dialogue import DialogueRecord, build_chat_tokenizer
        >>> tok = build_chat_tokenizer([DialogueRecord("0", "a.png", [Turn("what size is it?", "small", "x")])])
        >>> msgs = [{"role": "user", "content": "what size is it?"}, {"role": "assistant", "content": "small"},
        ...         {"role": "user", "content": "what size is it?"}]
        >>> p = prompt(tok, msgs, budget=6)
        >>> tok.decode(p.ids), p.dropped
        ('<user> what size is it', 2)
    """
    parts = _message_ids(tokenizer, messages, max_words)
    user = markers(tokenizer)[0]
    questions = [i for i, part in enumerate(parts) if part[0] == user]
    first = questions[-1 - max_earlier_turns] if 0 < max_earlier_turns < len(questions) else 0
    keep = len(parts)
    total = len(parts[-1])
    while keep > first + 1 and total + len(parts[keep - 2]) <= budget:
        keep -= 1
        total += len(parts[keep - 1])
    kept = parts[keep - 1:]
    # never start on a reply: a conversation opens with the user
    while len(kept) > 1 and kept[0][0] != user:
        kept = kept[1:]
    ids = [i for part in kept for i in part]
    cut = len(ids) > budget
    return Prompt(ids[:budget] if cut else ids, len(parts) - len(kept), cut)
