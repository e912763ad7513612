"""What generate.py's outputs must obey: min length, no-repeat n-grams, banned, forced and omitted words.

Min length and no-repeat n-grams act on each step's log-probabilities (`constrain`), banned tokens on the
step's logits (`suppressing`); forced words ("must
mention"; HF's `force_words_ids`) need constrained beam search (`select`); omitted words are taken out of
the finished outputs (`omitted`).

A constraint is met once one of its alternatives (a token sequence: a word, or the pieces of a word a
BPE tokenizer splits) appears in the output; `((red,),)` is "red", `((red,), (blue,))` is "red or
blue" (HF's disjunctive constraint). Each step, every input's K beams are chosen from

* the K best continuations by score, as in plain beam search (2K candidates, so <eos> cannot crowd
  them out),
* every live beam extended by the next token of each constraint it has not met yet (forced
  extension), and every live beam's own best next token,

then bucketed by how many constraint tokens they have met (their *bank*) and taken round-robin, the
best of the fullest bank first, then the best of the next bank, ..., then the second best of each
(Hokamp & Liu 2017, grid beam search; Post & Vilar 2018, dynamic beam allocation; HF's constrained
beam search). So beams that have met fewer constraints are kept alongside those that met more, and a
forced word can enter where the model finds it likely instead of at the first step. A beam may end
(<eos>) only once all its input's constraints are met; <eos> counts when it ranks within the best K
candidates of the beams that have met them all (plain beam search's rule, inside the full bank).

Example:
    >>> import torch
    >>> hist = [5, 7, 9]  # tokens so far
    >>> status(hist, (((7,),), ((9, 4),)))  # "7" is met; "9 4" is half-way: bank 1 + 1, next token 4
    (2, [4], False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from .nn.state import State, StepFn

if TYPE_CHECKING:  # decoding.py imports this module
    from .decoding import GenerationConfig

Phrase = tuple[int, ...]
Constraint = tuple[Phrase, ...]  # alternatives: met when any of them has been said
Constraints = tuple[Constraint, ...]


def banned_ngram_tokens(history: torch.Tensor, n: int) -> list[list[int]]:
    """For each row, the tokens that would complete an n-gram already present in that row."""
    banned: list[list[int]] = [[] for _ in range(history.shape[0])]
    if n <= 0 or history.shape[1] < n - 1:
        return banned
    rows = history.tolist()
    for r, seq in enumerate(rows):
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        for i in range(len(seq) - n + 1):
            if tuple(seq[i:i + n - 1]) == prefix:
                banned[r].append(seq[i + n - 1])
    return banned


def constrain(logprobs: torch.Tensor, history: torch.Tensor, cfg: GenerationConfig, eos_id: int) -> torch.Tensor:
    """Apply min length, the word budget and no-repeat-ngram to log-probabilities of the next token.

    When the two together ban every token (a short vocabulary, a long `min_len`), <eos> is allowed
    again: ending early breaks min_len, any other token would break no-repeat or the suppressed ids.
    """
    eos = logprobs[:, eos_id].clone()
    if history.shape[1] < cfg.min_len:
        logprobs[:, eos_id] = -math.inf
    if cfg.max_new_words:  # the word budget: a row that has said its words may only end (or finish a word)
        said = torch.isin(history, torch.tensor(cfg.word_ids, device=history.device, dtype=history.dtype)).sum(1)
        spent = said >= cfg.max_new_words
        if bool(spent.any()):
            closed = torch.ones(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
            closed[[eos_id, *cfg.continuation_ids]] = False
            logprobs[spent] = logprobs[spent].masked_fill(closed, -math.inf)
            eos[spent] = eos[spent].clamp(min=-1e9)  # if min_len also forbids <eos>, the budget wins
    if cfg.no_repeat_ngram_size:
        for r, tokens in enumerate(banned_ngram_tokens(history, cfg.no_repeat_ngram_size)):
            if tokens:
                logprobs[r, tokens] = -math.inf
    stuck = torch.isneginf(logprobs).all(dim=-1)
    if bool(stuck.any()):
        logprobs[stuck, eos_id] = eos[stuck]
    return logprobs


def suppressing(step: StepFn, token_ids: list[int]) -> StepFn:
    """Wrap a step function so that `token_ids` (e.g. <pad>, <bos>) are never generated."""
    def wrapped(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        logits, state, attention = step(tokens, state)
        return logits.index_fill(1, torch.tensor(token_ids, device=logits.device), -math.inf), state, attention
    return wrapped


def normalize(force_ids: Sequence) -> Constraints:
    """HF-style forced ids -> constraints: `[[3], [5, 6]]` (phrases, all forced) or `[[[3], [4]]]`
    (a list of alternatives per constraint); both may be mixed.

    Example:
        >>> normalize([[3], [[4], [5, 6]]])
        (((3,),), ((4,), (5, 6)))
    """
    out = []
    for item in force_ids:
        item = tuple(item)
        if not item:
            raise ValueError("a forced constraint is empty")
        if all(isinstance(t, int) for t in item):
            out.append((tuple(int(t) for t in item),))
        else:
            alternatives = tuple(tuple(int(t) for t in alt) for alt in item)
            if not all(alternatives):
                raise ValueError("a forced constraint has an empty alternative")
            out.append(alternatives)
    return tuple(out)


def _said(history: Sequence[int], phrase: Phrase) -> bool:
    n = len(phrase)
    return any(tuple(history[i:i + n]) == phrase for i in range(len(history) - n + 1))


def _partial(history: Sequence[int], phrase: Phrase) -> int:
    """The longest proper prefix of `phrase` that `history` ends with."""
    for k in range(min(len(phrase) - 1, len(history)), 0, -1):
        if tuple(history[len(history) - k:]) == phrase[:k]:
            return k
    return 0


def status(history: Sequence[int], constraints: Constraints) -> tuple[int, list[int], bool]:
    """(bank, next forced tokens, all met) of one beam: the bank counts constraint tokens said (a met
    constraint counts its longest alternative, so part of a phrase never outranks a whole one)."""
    bank, nexts, complete = 0, [], True
    for alternatives in constraints:
        if any(_said(history, alt) for alt in alternatives):
            bank += max(len(alt) for alt in alternatives)
            continue
        complete = False
        progress = [_partial(history, alt) for alt in alternatives]
        bank += max(progress)
        nexts += [alt[p] for alt, p in zip(alternatives, progress, strict=True)]
    return bank, nexts, complete


def _round_robin(candidates: list[tuple[float, int, int, int]], k: int) -> list[tuple[float, int, int, int]]:
    """The k candidates (score, bank, row, token) taken bank by bank: the best of the fullest bank,
    the best of the next bank, ..., then the second best of each."""
    candidates = sorted(candidates, key=lambda c: -c[0])
    seen: dict[int, int] = {}
    keyed = []
    for c in candidates:
        rank = seen.get(c[1], 0)
        seen[c[1]] = rank + 1
        keyed.append(((rank, -c[1]), c))
    return [c for _, c in sorted(keyed, key=lambda kc: kc[0])[:k]]


def select(logprobs: torch.Tensor, beam_scores: torch.Tensor, histories: list[list[int]],
           constraints: list[Constraints], k: int, eos_id: int
           ) -> tuple[list[tuple[int, int, float]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of constrained beam search over B inputs x K beams.

    Args:
        logprobs: (B*K, V) next-token log-probabilities (already constrained: min_len, banned ids, ...).
        beam_scores: (B, K) running scores; -inf for dead beams.
        histories: B*K token lists (each row's own tokens, no padding).
        constraints: per input, its constraints (may be empty: plain beam search's choice).
        k: beams per input.
        eos_id: the end token.

    Returns:
        (finished: (input, row, score) of beams that end here, rows (B*K,) to continue from,
        tokens (B*K,) they continue with, scores (B, K)).
    """
    batch, vocab = beam_scores.shape[0], logprobs.shape[1]
    logprobs = logprobs.clone()
    states = [status(h, constraints[r // k]) for r, h in enumerate(histories)]
    incomplete = torch.tensor([not s[2] for s in states], device=logprobs.device)
    logprobs[incomplete, eos_id] = -math.inf  # a beam ends only once its constraints are met
    totals = beam_scores.reshape(-1, 1) + logprobs  # (B*K, V)
    flat = totals.view(batch, k * vocab)
    top_scores, top_index = flat.topk(min(2 * k, k * vocab), dim=1)
    top_scores_l, top_index_l = top_scores.tolist(), top_index.tolist()
    best_scores, best_tokens = totals.masked_fill(
        torch.arange(vocab, device=totals.device) == eos_id, -math.inf).max(dim=1)
    best_scores_l, best_tokens_l = best_scores.tolist(), best_tokens.tolist()
    finished, rows, tokens, scores = [], [], [], []
    for b in range(batch):
        base = b * k
        pool: dict[tuple[int, int], float] = {}
        for score, index in zip(top_scores_l[b], top_index_l[b], strict=True):
            pool[(base + index // vocab, index % vocab)] = score
        for j in range(k):
            row = base + j
            pool.setdefault((row, best_tokens_l[row]), best_scores_l[row])
            for token in states[row][1]:
                pool.setdefault((row, token), float(totals[row, token]))
        live = [(s, r, t) for (r, t), s in pool.items() if math.isfinite(s)]
        # <eos> counts within the best K candidates of the beams that met every constraint.
        full = sorted((c for c in live if states[c[1]][2]), key=lambda c: -c[0])[:k]
        finished += [(b, r, s) for s, r, t in full if t == eos_id]
        extended = [(s, status(histories[r] + [t], constraints[b])[0] if constraints[b] else 0, r, t)
                    for s, r, t in live if t != eos_id]
        chosen = _round_robin(extended, k)
        chosen += [(-math.inf, 0, base, eos_id)] * (k - len(chosen))  # too few live candidates: dead beams
        for s, _, r, t in chosen:
            scores.append(s)
            rows.append(r)
            tokens.append(t)
    device = logprobs.device
    return (finished, torch.tensor(rows, device=device), torch.tensor(tokens, device=device),
            torch.tensor(scores, device=device).view(batch, k))


def omitted(hyps: list, omit_ids: Sequence[int]) -> list:
    """Hypotheses (best first) without the tokens `omit_ids` (and their attention rows); those that become
    equal to a better one are dropped.

    Example:
        >>> from polymodal.generate import Hypothesis
        >>> [h.tokens for h in omitted([Hypothesis([4, 9, 5], -1.0), Hypothesis([4, 8, 5], -2.0)], (8, 9))]
        [[4, 5]]
    """
    if not omit_ids:
        return hyps
    gone, out, seen = set(omit_ids), [], set()
    for h in hyps:
        keep = [i for i, t in enumerate(h.tokens) if t not in gone]
        tokens = tuple(h.tokens[i] for i in keep)
        if tokens not in seen:
            seen.add(tokens)
            attention = h.attention[keep] if h.attention is not None and len(keep) != len(h.tokens) else h.attention
            out.append(replace(h, tokens=list(tokens), attention=attention))
    return out


def check(constraints: Constraints, banned_ids: Sequence[int]) -> None:
    """ValueError when a constraint can only be met by saying a banned token."""
    banned = set(banned_ids)
    for alternatives in constraints:
        if all(set(alt) & banned for alt in alternatives):
            raise ValueError(f"forced tokens {list(alternatives[0])} are also banned or omitted: a word cannot "
                             f"be both forced and banned")
