"""The decoding state every decoder step carries: plain tensors by name, passed in and returned.

LSTM states and transformer KV caches are both a `State`, so one generator (`polymodal.generate`)
drives every decoder; these helpers are the two things it does to a state besides stepping it.

Example:
    >>> import torch
    >>> state = {"h": torch.arange(3.0)[:, None]}
    >>> reorder(state, torch.tensor([2, 0]))["h"].flatten().tolist()
    [2.0, 0.0]
    >>> concat_states(state, state)["h"].shape[0]
    6
"""

from __future__ import annotations

from collections.abc import Callable

import torch

State = dict[str, torch.Tensor]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State, "torch.Tensor | None"]]


def reorder(state: State, rows: torch.Tensor, unchanged: frozenset[str] = frozenset()) -> State:
    """Rows `rows` of every entry; entries named in `unchanged` are passed on as they are."""
    return {k: v if k in unchanged else v.index_select(0, rows) for k, v in state.items()}


def concat_states(old: State, new: State) -> State:
    """Rows of `new` after the rows of `old`: states whose entries have the same shape but for the rows
    (an LSTM's). Raises ValueError otherwise (a KV cache of another length needs the model's own join)."""
    if old.keys() != new.keys():
        raise ValueError(f"states with different entries cannot share a batch: {sorted(old)} vs {sorted(new)}")
    for name, tensor in old.items():
        if tensor.shape[1:] != new[name].shape[1:]:
            raise ValueError(f"state entry {name!r}: rows of shape {tuple(tensor.shape[1:])} and "
                             f"{tuple(new[name].shape[1:])} cannot share a batch")
    return {name: torch.cat([tensor, new[name]]) for name, tensor in old.items()}


def pair_rows(state: State) -> State:
    """(2B, ...) rows in pairs (conditional, unconditional) -> (B, 2, ...): one row per input for `generate`,
    which reorders and repeats whole pairs; `guided` unpairs them for the model's step (views, no copies)."""
    return {name: tensor.unflatten(0, (-1, 2)) for name, tensor in state.items()}


def guided(step: StepFn, scale: float) -> StepFn:
    """Classifier-free guidance (Ho & Salimans 2022) for any step over a `pair_rows` state.

    Each input's two rows (with and without its condition) step together; the next-token scores are
    log p_uncond + scale * (log p_cond - log p_uncond): scale 1 is plain conditional sampling, above 1
    follows the condition more closely. Tokens both rows rule out stay ruled out.

    Example:
        >>> table = torch.tensor([[0.0, 2.0], [0.0, 1.0]])  # row 0 conditional, row 1 unconditional
        >>> step = lambda tokens, s: (table.clone(), s, None)
        >>> logits, _, _ = guided(step, 3.0)(torch.tensor([0]), pair_rows({"h": torch.zeros(2, 1)}))
        >>> round(float(logits[0, 1] - logits[0, 0]), 4)  # 1 + 3 * (2 - 1): the condition's preference, tripled
        4.0
    """
    def guided_step(tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        flat = {name: tensor.flatten(0, 1) for name, tensor in state.items()}
        logits, new, _ = step(tokens.repeat_interleave(2), flat)
        logprobs = logits.float().log_softmax(-1).unflatten(0, (-1, 2))
        cond, uncond = logprobs[:, 0], logprobs[:, 1]
        mixed = torch.where(torch.isfinite(cond) & torch.isfinite(uncond), uncond + scale * (cond - uncond),
                            torch.full_like(cond, -torch.inf))
        return mixed, pair_rows(new), None

    return guided_step
