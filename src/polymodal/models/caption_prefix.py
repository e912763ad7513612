"""A decoder-only LM that reads a caption and then writes a sequence of its own: image codes or a scene plan.

    [<pad> ... <bos> w1 ... wn <eos>][t1 t2 ... tK]      captions left-padded to `text_max_len`
     positions 0 .. n+1 (caption)     text_max_len + j (written token j)

Captions are left-padded (masked) so the written part starts at the same column for every row of a batch, and
written token j always sits at position text_max_len + j: each position embedding means one slot of the output
(one cell of the image grid, one field of a plan) whatever the caption's length. The caption's closing <eos>
is the "begin" token. Training replaces a caption by the empty one ([<bos> <eos>]) with probability
`cfg.cond_drop`, so one network gives the conditional and the unconditional distribution, which sampling mixes
with classifier-free guidance (nn/state.py `guided`).

Two generators write this way: TokenImageGenerator (image codes, Parti / Chameleon) and SceneImageGenerator
(a scene plan, then drawn: LayoutGPT). They differ in what may be written next (`written_logits`).

Example:
    >>> ids, valid = left_pad(torch.tensor([[5, 6, 0], [7, 0, 0]]), pad_id=0)
    >>> ids.tolist(), valid.int().tolist()
    ([[0, 5, 6], [0, 0, 7]], [[0, 1, 1], [0, 0, 1]])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..generate import GenerationConfig, Hypothesis, generate
from ..nn.state import State, StepFn, guided, pair_rows
from ..nn.transformer import TransformerLM, attention_mask
from ..text.tokenizer import Tokenizer


def left_pad(tokens: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows (B, T) -> the same rows left-padded, and which positions are real (B, T)."""
    width = tokens.shape[1]
    lengths = (tokens != pad_id).sum(1, keepdim=True)
    source = (torch.arange(width, device=tokens.device)[None] - (width - lengths)) % width
    valid = torch.arange(width, device=tokens.device)[None] >= width - lengths
    return torch.where(valid, tokens.gather(1, source), torch.full_like(tokens, pad_id)), valid


class CaptionPrefixedWriter:
    """Mixin for an nn.Module with `lm` (TransformerLM), `tokenizer` and `cfg.text_max_len` / `cfg.cond_drop`:
    the caption prefix, the KV-cached step and the caption dropping that guidance needs."""

    lm: TransformerLM
    tokenizer: Tokenizer
    cfg: object

    def written_logits(self, hidden: torch.Tensor, state: State) -> torch.Tensor:
        """Hidden states (B, D) -> logits over the whole vocabulary (B, V), -inf where a token may not come next."""
        raise NotImplementedError

    def drop_captions(self, captions: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Rows where `drop` is True become the empty caption [<bos> <eos>] (right-padded)."""
        tok = self.tokenizer
        empty = torch.full_like(captions, tok.pad_id)
        empty[:, 0], empty[:, 1] = tok.bos_id, tok.eos_id
        return torch.where(drop[:, None], empty, captions)

    def train_captions(self, captions: torch.Tensor) -> torch.Tensor:
        """Captions as training sees them: each replaced by the empty one with chance `cfg.cond_drop`."""
        if not self.training or self.cfg.cond_drop <= 0:  # type: ignore[attr-defined]
            return captions
        return self.drop_captions(captions, torch.rand(len(captions), device=captions.device) < self.cfg.cond_drop)

    def embed_sequence(self, captions: torch.Tensor, written: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[left-padded caption][written ids of the one vocabulary] -> embeddings (B, T + W, D) and which keys are
        real (B, T + W)."""
        max_len = self.cfg.text_max_len  # type: ignore[attr-defined]
        text, valid = left_pad(captions[:, :max_len], self.tokenizer.pad_id)
        text_pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        written_pos = max_len + torch.arange(written.shape[1], device=written.device)
        x = torch.cat([self.lm.embed(text, text_pos), self.lm.embed(written, written_pos.expand(len(written), -1))],
                      dim=1)
        return x, torch.cat([valid, valid.new_ones(written.shape)], dim=1)

    def written_hidden(self, captions: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the hidden states that predict each written token (B, W, D), from the caption's <eos> on
        (`written` (B, W) are the targets; the last one is read by nothing)."""
        x, valid = self.embed_sequence(captions, written[:, :-1])
        hidden, _ = self.lm(x, mask=attention_mask(valid, x.shape[1]))
        return hidden[:, x.shape[1] - written.shape[1]:]

    def init_state(self, captions: torch.Tensor) -> State:
        """Prefill the KV cache with each caption up to (not including) its <eos>, which the first step feeds."""
        pad, eos = self.tokenizer.pad_id, self.tokenizer.eos_id
        open_captions = torch.where(captions == eos, torch.full_like(captions, pad), captions)
        x, valid = self.embed_sequence(open_captions, captions.new_zeros(len(captions), 0))
        _, cache = self.lm(x, mask=attention_mask(valid, x.shape[1]))
        state: State = {"text_pos": valid.sum(1), "made": torch.zeros(len(x), dtype=torch.long, device=x.device),
                        "valid": valid}
        for i in range(len(self.lm.h)):
            state[f"pk{i}"], state[f"pv{i}"] = cache[f"k{i}"], cache[f"v{i}"]
            state[f"k{i}"], state[f"v{i}"] = cache[f"k{i}"][:, :, :0], cache[f"v{i}"][:, :, :0]
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        """One token per row against the cache -> logits over the vocabulary (B, V) (`written_logits`)."""
        made = state["made"]
        # `generate` opens with <bos>; what opens the written part is the caption's <eos>
        tokens = torch.where(made == 0, self.tokenizer.eos_id, tokens)
        pos = torch.where(made == 0, state["text_pos"], self.cfg.text_max_len + made - 1)  # type: ignore[attr-defined]
        x = self.lm.embed(tokens[:, None], pos[:, None])
        prefix = [(state[f"pk{i}"], state[f"pv{i}"]) for i in range(len(self.lm.h))]
        hidden, cache = self.lm(x, mask=state["valid"][:, None, None, :], cache=state, prefix=prefix)
        new = {**state, **cache, "made": made + 1}
        return self.written_logits(hidden[:, -1], new).float(), new, None

    def sample_written(self, captions: torch.Tensor, n: int, seed: int, guidance: float, max_len: int,
                       temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                       start: Callable[[int], State] | None = None,
                       constrain: Callable[[StepFn], StepFn] | None = None) -> list[list[Hypothesis]]:
        """n sampled continuations of each caption (B, T) (the model's temperature / top-k / top-p where not
        given), with classifier-free guidance against the empty caption unless `guidance` is 1 (0 follows the
        empty one alone). `start(rows)` adds entries to the fresh decoding state, `constrain` wraps the step."""
        cfg, tok = self.cfg, self.tokenizer
        generation = GenerationConfig(strategy="sample", max_len=max_len, num_return_sequences=n, seed=seed,
                                      temperature=cfg.temperature if temperature is None else temperature,  # type: ignore[attr-defined]
                                      top_k=cfg.top_k if top_k is None else top_k,  # type: ignore[attr-defined]
                                      top_p=cfg.top_p if top_p is None else top_p)  # type: ignore[attr-defined]
        rows = captions
        if guidance != 1.0:  # rows in pairs: (caption, empty caption)
            empty = self.drop_captions(captions, torch.ones(len(captions), dtype=torch.bool, device=captions.device))
            rows = torch.stack([captions, empty], dim=1).flatten(0, 1)
        state = self.init_state(rows)
        if start is not None:
            state.update(start(len(rows)))
        step: StepFn = self.step
        if guidance != 1.0:
            step, state = guided(step, guidance), pair_rows(state)
        if constrain is not None:
            step = constrain(step)
        return generate(step, state, tok.bos_id, tok.eos_id, generation)
