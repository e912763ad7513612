"""One batched text generator for every decoder: greedy, beam search and sampling, with word controls.

Banned words are never generated; forced words are said through constrained beam search (constrained.py);
omitted words are left out of the outputs.

A model plugs in through two functions over a dict of batch-first tensors (its decoding state):

    step(tokens (R,), state) -> (logits (R, V), state, attention (R, N) or None)

so LSTM states and transformer KV caches are handled alike: beam search reorders any state with
`index_select(0, rows)`. An entry that no step has changed yet (the step passes the very same tensor
on: image regions, cross-attention keys, a prefix's KV cache) is the same for every beam of an input,
so beam search leaves it where it is instead of copying it every step. (So a step must return new
tensors for what it changes, never write into the ones it was given.)

Beam search lives in beam.py (`BeamBatch`, which the server's continuous batching uses too); the
settings and the generated sequences in decoding.py.

Example:
    >>> table = torch.full((5, 5), -9.0)  # a toy decoder: next-token logits from the last token alone
    >>> table[1, 3] = table[3, 4] = table[4, 2] = 0.0  # <bos>=1 -> 3 -> 4 -> <eos>=2
    >>> def step(tokens, state):
    ...     return table[tokens], state, None
    >>> cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=20)
    >>> hyps = generate(step, {"features": torch.zeros(2, 8)}, bos_id=1, eos_id=2, cfg=cfg)  # 2 inputs
    >>> hyps[0][0].tokens  # best caption of the first input, as token ids (no <bos>, no <eos>)
    [3, 4]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from . import constrained as forcing
from .beam import BeamBatch, beam_search
from .constrained import constrain as _constrain
from .constrained import suppressing
from .decoding import STRATEGIES, GenerationConfig, Hypothesis, num_rows
from .nn.state import State, StepFn, concat_states, reorder

# generate's API: what models, the server and the tests import from here
__all__ = ["STRATEGIES", "BeamBatch", "GenerationConfig", "Hypothesis", "State", "StepFn", "beam_search",
           "concat_states", "generate", "greedy", "sample", "suppressing"]


def _strip(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def _token_by_token(step: StepFn, state: State, bos_id: int, eos_id: int, cfg: GenerationConfig,
                    pick: Callable[[torch.Tensor], torch.Tensor]) -> list[Hypothesis]:
    """One sequence per state row, each next token chosen by `pick(logprobs) -> (R,)`."""
    rows = num_rows(state)
    device = next(iter(state.values())).device
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    history = torch.empty(rows, 0, dtype=torch.long, device=device)
    scores = torch.zeros(rows, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    attention = []
    for _ in range(cfg.max_len):
        logits, state, alpha = step(tokens, state)
        logprobs = _constrain(logits.float().log_softmax(-1), history, cfg, eos_id)
        tokens = torch.where(finished, torch.full_like(tokens, eos_id), pick(logprobs))
        picked = logprobs.gather(1, tokens[:, None]).squeeze(1)
        scores += torch.where(finished, torch.zeros_like(picked), picked)
        history = torch.cat([history, tokens[:, None]], dim=1)
        if alpha is not None and cfg.return_attention:
            attention.append(alpha)
        finished |= tokens == eos_id
        if bool(finished.all()):
            break
    attn = torch.stack(attention, dim=1) if attention else None
    hyps = []
    for r, seq in enumerate(history.tolist()):
        words = _strip(seq, eos_id)
        length = min(len(words) + 1, len(seq))
        hyps.append(Hypothesis(words, float(scores[r]) / length ** cfg.length_penalty,
                               attn[r, : len(words)] if attn is not None else None))
    return hyps


@STRATEGIES.register("greedy")
def greedy(step: StepFn, state: State, bos_id: int, eos_id: int, cfg: GenerationConfig) -> list[list[Hypothesis]]:
    hyps = _token_by_token(step, state, bos_id, eos_id, cfg, pick=lambda logprobs: logprobs.argmax(dim=-1))
    return [[h] for h in hyps]


@STRATEGIES.register("sample")
def sample(step: StepFn, state: State, bos_id: int, eos_id: int, cfg: GenerationConfig) -> list[list[Hypothesis]]:
    """Temperature / top-k / top-p sampling; `num_return_sequences` samples per input."""
    n, batch = cfg.num_return_sequences, num_rows(state)
    device = next(iter(state.values())).device
    state = reorder(state, torch.arange(batch, device=device).repeat_interleave(n))
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())

    def pick(logprobs: torch.Tensor) -> torch.Tensor:
        filtered = _filter_logits(logprobs / cfg.temperature, cfg.top_k, cfg.top_p)
        return torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(1)

    hyps = _token_by_token(step, state, bos_id, eos_id, cfg, pick)
    # Best first, like every strategy (`generate` promises it; the server's n-best relies on it).
    return [sorted(hyps[b * n:(b + 1) * n], key=lambda h: -h.score) for b in range(batch)]


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the first token always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return logits


def generate(step: StepFn, state: State, bos_id: int, eos_id: int, cfg: GenerationConfig | None = None,
             suppress_ids: tuple[int, ...] = (), force: Sequence[Sequence] | None = None) -> list[list[Hypothesis]]:
    """Run the configured strategy; returns, per input, its hypotheses sorted best first.

    `<bos>`, `suppress_ids` and the config's `banned_ids` are never generated, `omit_ids` are left out of the
    outputs (n-best that become equal merge into the best of them); every output contains the
    config's `force_ids`, or with `force` each input its own (a list per input, as `force_ids`; beam only).
    """
    cfg = cfg or GenerationConfig()
    step = suppressing(step, sorted({bos_id, *suppress_ids, *cfg.banned_ids}))
    if force is not None and any(force):
        cfg.require_beams_for_forcing()
        return beam_search(step, state, bos_id, eos_id, cfg, force)
    hyps = STRATEGIES.get(cfg.strategy)(step, state, bos_id, eos_id, cfg)
    return [forcing.omitted(per_input, cfg.omit_ids) for per_input in hyps] if cfg.omit_ids else hyps
