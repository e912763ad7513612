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
