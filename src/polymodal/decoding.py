"""What a generator is asked for and gives back: `GenerationConfig`, `Hypothesis`, the strategy registry.

One config serves every decoder and strategy; generate.py registers greedy and sampling, beam.py beam search.

Example:
    >>> cfg = GenerationConfig(strategy="sample", top_p=0.9, seed=0)
    >>> cfg.num_return_sequences, Hypothesis([3, 4], -0.5).tokens
    (1, [3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import constrained as forcing
from .errors import ConfigError
from .nn.state import State
from .registry import Registry

STRATEGIES = Registry("generation strategy")


@dataclass
class GenerationConfig:
    strategy: str = "beam"             # greedy | beam | sample
    beam_size: int = 3
    max_len: int = 24                  # generated tokens, <eos> included
    min_len: int = 1                   # words before <eos> is allowed
    length_penalty: float = 1.0        # score = sum log p / length ** length_penalty
    no_repeat_ngram_size: int = 0      # forbid repeating any n-gram of this size; 0 = off
    num_return_sequences: int = 1      # n-best per input (beam) or samples per input (sample)
    early_stopping: bool = True        # beam: stop once beam_size hypotheses have finished
    temperature: float = 1.0
    top_k: int = 0                     # sample only among the k most likely tokens; 0 = off
    top_p: float = 1.0                 # nucleus sampling threshold; 1.0 = off
    seed: int | None = None            # sampling seed for reproducible samples
    return_attention: bool = False
    banned_ids: tuple[int, ...] = ()   # tokens never generated (a user's "must not mention"; HF's bad_words_ids)
    # token sequences every output must contain (a user's "must mention"; HF's force_words_ids, disjunctive
    # lists too): constrained beam search, see constrained.py. Normalized to a tuple of constraints.
    force_ids: tuple = ()
    omit_ids: tuple[int, ...] = ()     # tokens left out of the outputs (the model may say them: "a red circle" ->
    #                                    "a circle"; a user's "leave out" for modifiers, see docs/control.md)
    max_new_words: int = 0             # word budget: once this many `word_ids` are said only <eos> (or a word's
    word_ids: tuple[int, ...] = ()     # `continuation_ids`, BPE pieces) may follow; 0 = none (constrained.py)
    continuation_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        from . import generate  # noqa: F401 - registers the strategies (it imports this module)

        if self.strategy not in STRATEGIES:
            STRATEGIES.get(self.strategy)  # raises with a did-you-mean
        if min(self.beam_size, self.max_len, self.num_return_sequences) < 1 or self.max_new_words < 0:
            raise ConfigError("generation: beam_size, max_len and num_return_sequences must be >= 1, max_new_words >= 0")
        if self.strategy == "beam" and self.num_return_sequences > self.beam_size:
            raise ConfigError(f"generation: num_return_sequences ({self.num_return_sequences}) "
                              f"cannot exceed beam_size ({self.beam_size})")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("generation: temperature must be > 0 and top_p in (0, 1]")
        try:
            self.force_ids = forcing.normalize(self.force_ids)
            forcing.check(self.force_ids, (*self.banned_ids, *self.omit_ids))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"generation: force_ids: {err}") from None
        if self.force_ids:
            self.require_beams_for_forcing()

    def require_beams_for_forcing(self) -> None:
        """ConfigError unless forced words can be searched for: beam search with 2 beams or more (one beam
        would have to say them at once; HF also asks for num_beams > 1)."""
        if self.strategy != "beam" or self.beam_size < 2:
            raise ConfigError(f"generation: forced words need beam search with beam_size >= 2, not "
                              f"{self.strategy!r} with beam_size {self.beam_size}")


@dataclass
class Hypothesis:
    """A generated sequence: token ids (no <bos>/<eos>), its score and per-token attention (T, N)."""

    tokens: list[int]
    score: float
    attention: torch.Tensor | None = field(default=None, repr=False)



def num_rows(state: State) -> int:
    """How many rows (inputs, or inputs x beams) a decoding state holds."""
    return next(iter(state.values())).shape[0]
