"""Beam search for generate.py over a batch that inputs join and leave between steps (`BeamBatch`).

An input's rows leave as soon as its search ends (the rest decode on without them), and the server's
continuous batching adds requests to a running batch. Forced words (constrained.py) are searched for here; a
state entry that no step has changed yet is shared by an input's beams instead of being copied (generate.py
says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import torch

from . import constrained as forcing
from .constrained import constrain as _constrain
from .constrained import suppressing
from .decoding import STRATEGIES, GenerationConfig, Hypothesis, num_rows
from .nn.state import State, StepFn, concat_states, reorder


class BeamBatch:
    """Beam search over a changing set of inputs: inputs join (`add`) and leave (when done) between steps.

    Input b owns rows b*K .. b*K+K-1 (its K beams); all live rows go through one `step`. `generate`
    adds every input at once and advances until all are done; the server adds requests as they
    arrive (continuous batching: a request joins the running batch at the next step instead of
    waiting for the batch to end) and answers each as soon as its own search ends. Inputs that
    joined later have shorter histories: histories are kept right-aligned, and `join` merges a
    new state into the running one (`concat_states`, or a model's own when its state grows with the
    tokens, e.g. a KV cache).

    Example:
        >>> table = torch.full((5, 5), -9.0)  # a toy decoder: <bos>=1 -> 3 -> 4 -> <eos>=2
        >>> table[1, 3] = table[3, 4] = table[4, 2] = 0.0
        >>> def step(tokens, state):
        ...     return table[tokens], state, None
        >>> beams = BeamBatch(step, bos_id=1, eos_id=2, cfg=GenerationConfig(beam_size=3))
        >>> beams.add({"features": torch.zeros(1, 8)}, keys=["a"])
        >>> beams.advance()  # one step: nothing has ended yet
        []
        >>> beams.add({"features": torch.zeros(1, 8)}, keys=["b"])  # joins the running batch
        >>> while beams:
        ...     for key, hyps in beams.advance():
        ...         print(key, hyps[0].tokens)
        a [3, 4]
        b [3, 4]
    """

    def __init__(self, step: StepFn, bos_id: int, eos_id: int, cfg: GenerationConfig,
                 join: Callable[[State, State], State] = concat_states, suppress_ids: Sequence[int] = ()):
        if suppress_ids or cfg.banned_ids:  # as `generate` does: <bos> and these are never generated
            step = suppressing(step, sorted({bos_id, *suppress_ids, *cfg.banned_ids}))
        self.step, self.bos_id, self.eos_id, self.cfg, self.join = step, bos_id, eos_id, cfg, join
        self.k = cfg.beam_size
        self.keys: list[Hashable] = []
        self.finished: list[list[Hypothesis]] = []
        self.steps: list[int] = []  # tokens each live input has generated so far
        self.forced: list[forcing.Constraints] = []  # each live input's forced words (may differ per input)
        self.state: State = {}
        self.beam_scores = self.tokens = self.history = torch.empty(0)
        self.attn_history: torch.Tensor | None = None
        # Entries no step has replaced are still K equal copies per input: reordering within an input's
        # beams would not change them, so they are not copied (a prefix cache is most of the state).
        self.unchanged: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, state: State, keys: Sequence[Hashable], force: Sequence[Sequence] | None = None) -> None:
        """Start a search for each row of `state` (an init_state of len(keys) inputs), named by `keys`;
        `force`: per input, its forced ids (as GenerationConfig.force_ids; default: the config's)."""
        n, k = num_rows(state), self.k
        if n != len(keys) or (force is not None and len(force) != n):
            raise ValueError(f"{n} state rows but {len(keys)} keys" + (f", {len(force)} forced" if force else ""))
        forced = [forcing.normalize(f) for f in force] if force is not None else [self.cfg.force_ids] * n
        for constraints in forced:
            forcing.check(constraints, (*self.cfg.banned_ids, *self.cfg.omit_ids))
        device = next(iter(state.values())).device
        state = reorder(state, torch.arange(n, device=device).repeat_interleave(k))
        # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
        scores = torch.full((n, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        tokens = torch.full((n * k,), self.bos_id, dtype=torch.long, device=device)
        if not self.keys:
            self.state, self.unchanged = state, frozenset(state)
            self.beam_scores, self.tokens = scores, tokens
            self.history, self.attn_history = torch.empty(n * k, 0, dtype=torch.long, device=device), None
        else:  # new inputs have no history yet: left-pad theirs (right-aligned histories)
            self.state = self.join(self.state, state)
            self.beam_scores, self.tokens = torch.cat([self.beam_scores, scores]), torch.cat([self.tokens, tokens])
            self.history = torch.cat([self.history, self.history.new_zeros(n * k, self.history.shape[1])])
            if self.attn_history is not None:
                self.attn_history = torch.cat([self.attn_history,
                                               self.attn_history.new_zeros(n * k, *self.attn_history.shape[1:])])
        self.keys += list(keys)
        self.finished += [[] for _ in range(n)]
        self.steps += [0] * n
        self.forced += forced

    def _constrain(self, logprobs: torch.Tensor) -> torch.Tensor:
        """`_constrain` on each group of inputs of one history length (all of them, offline)."""
        lengths = sorted(set(self.steps))
        if len(lengths) == 1 or not (self.cfg.min_len or self.cfg.no_repeat_ngram_size):  # history unused
            return _constrain(logprobs, self.history, self.cfg, self.eos_id)
        width = self.history.shape[1]
        for length in lengths:
            rows = torch.tensor([b * self.k + j for b, s in enumerate(self.steps) if s == length
                                 for j in range(self.k)], device=logprobs.device)
            logprobs[rows] = _constrain(logprobs[rows], self.history[rows, width - length:], self.cfg, self.eos_id)
        return logprobs

    def _hypothesis(self, row: int, length: int, score: float, ended: bool) -> Hypothesis:
        """Row `row`'s last `length` tokens (the <eos> just chosen is not among them when `ended`)."""
        tokens = self.history[row, self.history.shape[1] - length:].tolist()
        attn = None
        if self.attn_history is not None:
            attn = self.attn_history[row, self.attn_history.shape[1] - length - ended:]
            attn = attn[:-1] if ended else attn  # drop the <eos> step
        return Hypothesis(tokens, score / (length + ended) ** self.cfg.length_penalty, attn)

    def _select(self, logprobs: torch.Tensor) -> tuple[list[tuple[int, int, float]], torch.Tensor]:
        """Plain beam search's choice: (inputs, rows, scores) that end in <eos>, and the rows to continue."""
        k, batch = self.k, len(self.keys)
        vocab = logprobs.shape[-1]
        candidates = (self.beam_scores.reshape(-1, 1) + logprobs).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B, 2K); at most K of them end in <eos>
        top_beam, top_token = top_index // vocab, top_index % vocab
        is_eos = top_token == self.eos_id
        # HF semantics: an <eos> ranked below the beam width is not kept.
        hits = (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist()
        finished = []
        if hits:
            scores_list, beams_list = top_scores.tolist(), top_beam.tolist()
            finished = [(b, b * k + beams_list[b][j], scores_list[b][j]) for b, j in hits]
        # Continue with the K best candidates that did not end, in score order.
        rank = torch.arange(2 * k, device=is_eos.device).expand(batch, -1) + is_eos.long() * (2 * k)
        keep = rank.topk(k, dim=1, largest=False).indices  # (B, K)
        self.beam_scores = top_scores.gather(1, keep)
        base = (torch.arange(batch, device=keep.device) * k)[:, None]  # row offset of each input's beams
        self.tokens = top_token.gather(1, keep).reshape(-1)
        return finished, (base + top_beam.gather(1, keep)).reshape(-1)

    def _histories(self) -> list[list[int]]:
        """Each row's own tokens (without the left padding of inputs that joined later)."""
        width, rows = self.history.shape[1], self.history.tolist()
        return [rows[r][width - self.steps[r // self.k]:] for r in range(len(rows))]

    def advance(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """One step for every live input; returns (key, hypotheses best first) of the inputs that ended."""
        cfg, k = self.cfg, self.k
        logits, new_state, alpha = self.step(self.tokens, self.state)
        self.unchanged = frozenset(n for n in self.unchanged if new_state.get(n) is self.state[n])
        logprobs = self._constrain(logits.float().log_softmax(-1))
        if alpha is not None and cfg.return_attention:
            self.attn_history = alpha[:, None] if self.attn_history is None else \
                torch.cat([self.attn_history, alpha[:, None]], 1)
        if any(self.forced):
            hits, rows, self.tokens, self.beam_scores = forcing.select(
                logprobs, self.beam_scores, self._histories(), self.forced, k, self.eos_id)
        else:
            hits, rows = self._select(logprobs)
        for b, row, score in hits:
            self.finished[b].append(self._hypothesis(row, self.steps[b], score, ended=True))
        self.state = reorder(new_state, rows, self.unchanged)
        self.history = torch.cat([self.history.index_select(0, rows), self.tokens[:, None]], dim=1)
        if self.attn_history is not None:
            self.attn_history = self.attn_history.index_select(0, rows)
        self.steps = [s + 1 for s in self.steps]
        return self._retire(self._done())

    def _done(self) -> list[int]:
        """Inputs whose search is over: K finished hypotheses none of the live beams can beat, or max_len."""
        cfg, done = self.cfg, []
        histories: list[list[int]] | None = None  # every row's tokens, listed once if a forced search ends
        # the best live score (beam 0 in plain beam search; forced words keep banks, not score order)
        running = self.beam_scores.max(dim=1).values.tolist() if any(len(f) >= self.k for f in self.finished) \
            else None
        for b, (finished, length) in enumerate(zip(self.finished, self.steps, strict=True)):
            if running is not None and len(finished) >= self.k:
                worst = min(h.score for h in finished)
                if cfg.early_stopping or running[b] / (length + 1) ** cfg.length_penalty <= worst:
                    done.append(b)
                    continue
            if length >= cfg.max_len:  # still running at max_len: the live beams count as they are
                scores, beams = self.beam_scores[b].tolist(), range(self.k)
                if self.forced[b]:  # those that met the forced words; the others only if nothing did
                    histories = histories if histories is not None else self._histories()
                    rows = histories[b * self.k:(b + 1) * self.k]
                    met = [j for j in beams if forcing.status(rows[j], self.forced[b])[2]]
                    beams = met if met or finished else beams
                finished += [self._hypothesis(b * self.k + j, length, scores[j], ended=False)
                             for j in beams if math.isfinite(scores[j])]
                done.append(b)
        return done

    def _retire(self, done: list[int]) -> list[tuple[Hashable, list[Hypothesis]]]:
        """Drop the rows of `done` inputs from the batch; their results, best first."""
        if not done:
            return []
        n = self.cfg.num_return_sequences
        omit = self.cfg.omit_ids
        results = [(self.keys[b], forcing.omitted(sorted(self.finished[b], key=lambda h: -h.score), omit)[:n])
                   for b in done]
        gone = set(done)
        live = [b for b in range(len(self.keys)) if b not in gone]
        self.keys = [self.keys[b] for b in live]
        self.finished = [self.finished[b] for b in live]
        self.steps = [self.steps[b] for b in live]
        self.forced = [self.forced[b] for b in live]
        if not live:
            self.state = {}
            return results
        inputs = torch.tensor(live, device=self.tokens.device)
        rows = (inputs[:, None] * self.k + torch.arange(self.k, device=inputs.device)).reshape(-1)
        self.state = reorder(self.state, rows)  # every entry: the unchanged ones lose rows too
        self.beam_scores, self.tokens = self.beam_scores.index_select(0, inputs), self.tokens.index_select(0, rows)
        width = max(self.steps)  # columns every live input has left of its history are padding
        self.history = self.history.index_select(0, rows)[:, self.history.shape[1] - width:]
        if self.attn_history is not None:
            self.attn_history = self.attn_history.index_select(0, rows)[:, self.attn_history.shape[1] - width:]
        return results


@STRATEGIES.register("beam")
def beam_search(step: StepFn, state: State, bos_id: int, eos_id: int, cfg: GenerationConfig,
                force: Sequence[Sequence] | None = None) -> list[list[Hypothesis]]:
    """Beam search over the whole batch at once: B inputs x K beams are one (B*K)-row step; an input's
    rows leave the batch when its search ends. `force`: per input, its forced ids (default: the config's)."""
    beams = BeamBatch(step, bos_id, eos_id, cfg)
    beams.add(state, range(num_rows(state)), force)
    results: dict[Hashable, list[Hypothesis]] = {}
    while beams:
        results.update(beams.advance())
    return [results[b] for b in range(len(results))]
