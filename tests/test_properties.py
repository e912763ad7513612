"""Property tests (hypothesis): tokenizers, the generator, collate functions and fusion modules.

Generation properties run the real `generate` on a toy model whose next-token logits are a random
function of the last token and the position, so that every strategy and constraint is exercised on
thousands of distinct score landscapes without training anything.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polymodal.data.datasets import collate_captions
from polymodal.data.qa import collate_qa
from polymodal.generate import GenerationConfig, generate
from polymodal.nn.fusion.base import FusionConfig, build_fusion
from polymodal.registry import FUSION
from polymodal.text.tokenizer import BPETokenizer, WordTokenizer, split_words

FAST = settings(max_examples=30, deadline=None)
PAD, BOS, EOS = 0, 1, 2


# ----------------------------------------------------------------------------- tokenizers
@FAST
@given(st.text(max_size=80))
def test_word_tokenizer_round_trip_on_any_unicode(text):
    """decode(encode(t)) is t normalised as documented: lower-cased, only runs of [a-z0-9'] and commas
    kept, joined by single spaces, no space before a comma; encoding that again changes nothing."""
    tok = WordTokenizer.build([text])  # every word of t is in the vocabulary
    expected = " ".join(split_words(text)).replace(" ,", ",")
    assert tok.decode(tok.encode(text)) == expected
    assert tok.encode(tok.decode(tok.encode(text))) == tok.encode(text)


@FAST
@given(st.text(max_size=40), st.text(max_size=40))
def test_word_tokenizer_unknown_words_keep_their_place(seen, unseen):
    tok = WordTokenizer.build([seen])
    ids = tok.encode(seen + " " + unseen)
    assert len(ids) == len(split_words(seen + " " + unseen))
    assert all(0 <= i < len(tok) for i in ids) and tok.pad_id not in ids


@functools.lru_cache(maxsize=1)
def bpe() -> BPETokenizer:
    return BPETokenizer.build(["a red circle left of a blue square", "two green stars", "a small purple cube"] * 4,
                              vocab_size=300)


@FAST
@given(st.text(max_size=60))
def test_bpe_round_trip_on_any_unicode(text):
    """Byte-level BPE loses nothing but its documented normalisation (NFKC, lower case) and the
    whitespace at both ends: decode(encode(t)) == normalize(t).strip()."""
    tok = bpe()
    normalized = tok.hf.normalizer.normalize_str(text)
    assert tok.decode(tok.encode(text)) == normalized.strip()
    assert tok.unk_id not in tok.encode(text)


# ----------------------------------------------------------------------------- generation
def toy_model(vocab: int, seed: int, rows: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, vocab, generator=g) * 3   # logits of the next token given the last
    by_position = torch.randn(32, vocab, generator=g)   # and a position-dependent bias

    def step(tokens: torch.Tensor, state: dict) -> tuple:
        t = state["t"]
        return table[tokens] + by_position[t.clamp(max=31)], {"t": t + 1}, None

    return step, {"t": torch.zeros(rows, dtype=torch.long)}


def run(step, state, **cfg) -> list:
    return generate(step, state, BOS, EOS, GenerationConfig(**cfg), suppress_ids=(PAD,))


landscape = st.fixed_dictionaries({"vocab": st.integers(5, 30), "seed": st.integers(0, 10_000),
                                   "rows": st.integers(1, 3)})


@FAST
@given(landscape, st.integers(1, 10), st.integers(0, 3), st.integers(0, 3), st.floats(0.0, 2.0))
def test_beam_of_one_is_greedy(m, max_len, min_len, no_repeat, penalty):
    step, state = toy_model(**m)
    cfg = {"max_len": max_len, "min_len": min_len, "no_repeat_ngram_size": no_repeat, "length_penalty": penalty}
    beam = run(step, state, strategy="beam", beam_size=1, **cfg)
    greedy = run(step, state, strategy="greedy", **cfg)
    assert all(len(b) == 1 for b in beam)  # even when min_len and no-repeat together ban every token
    assert [b[0].tokens for b in beam] == [g[0].tokens for g in greedy]
    assert [b[0].score for b in beam] == pytest.approx([g[0].score for g in greedy], rel=1e-5, abs=1e-5)


@FAST
@given(landscape, st.integers(1, 5), st.integers(1, 10), st.sampled_from(["beam", "sample"]), st.booleans())
def test_nbest_is_sorted_best_first(m, n, max_len, strategy, early_stopping):
    step, state = toy_model(**m)
    hyps = run(step, state, strategy=strategy, beam_size=max(n, 2), num_return_sequences=n, max_len=max_len,
               early_stopping=early_stopping, seed=m["seed"])
    for per_input in hyps:
        scores = [h.score for h in per_input]
        # Fewer than n only when fewer distinct sequences exist (a tiny vocabulary, max_len 1).
        assert 1 <= len(per_input) <= n and scores == sorted(scores, reverse=True)


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


@FAST
@given(landscape, st.integers(1, 4), st.integers(1, 12), st.sampled_from(["greedy", "beam", "sample"]))
def test_no_repeat_ngram_is_honoured_for_any_n(m, n, max_len, strategy):
    m = {**m, "vocab": max(m["vocab"], max_len + 4)}  # room for max_len distinct tokens, even with n = 1
    step, state = toy_model(**m)
    hyps = run(step, state, strategy=strategy, beam_size=3, num_return_sequences=2 if strategy != "greedy" else 1,
               max_len=max_len, no_repeat_ngram_size=n, seed=m["seed"])
    for per_input in hyps:
        for h in per_input:
            grams = ngrams(h.tokens, n)
            assert len(grams) == len(set(grams)), f"repeated {n}-gram in {h.tokens}"
            assert PAD not in h.tokens and BOS not in h.tokens and EOS not in h.tokens


# ----------------------------------------------------------------------------- collate
sequences = st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=12), min_size=1, max_size=6)


@FAST
@given(sequences, st.lists(st.booleans(), min_size=6, max_size=6))
def test_caption_collate_pads_right_and_masks_agree(seqs, failed):
    items = [None if failed[i] else {"image": torch.full((3, 4, 4), i, dtype=torch.uint8),
                                     "tokens": torch.tensor(s), "record": i} for i, s in enumerate(seqs)]
    batch = collate_captions(items, pad_id=PAD)
    good = [(i, s) for i, s in enumerate(seqs) if not failed[i]]
    assert int(batch["skipped"]) == len(seqs) - len(good)
    if not good:
        assert set(batch) == {"skipped"}
        return
    tokens, mask = batch["tokens"], batch["tokens"] != PAD
    assert tokens.shape == (len(good), max(len(s) for _, s in good))
    assert mask.sum(1).tolist() == [len(s) for _, s in good]
    assert (mask.long().cumsum(1) == torch.arange(1, tokens.shape[1] + 1).clamp(max=mask.sum(1, keepdim=True))).all()
    for r, (i, s) in enumerate(good):
        assert tokens[r, :len(s)].tolist() == s and int(batch["record"][r]) == i
        assert batch["images"][r].shape == (3, 4, 4)


@FAST
@given(sequences)
def test_qa_collate_pads_right_and_masks_agree(seqs):
    items = [{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "question": torch.tensor(s),
              "targets": torch.zeros(5), "index": i} for i, s in enumerate(seqs)]
    batch = collate_qa(items, pad_id=PAD)
    mask = batch["tokens"] != PAD
    assert mask.sum(1).tolist() == [len(s) for s in seqs]
    assert all(batch["tokens"][r, :len(s)].tolist() == s for r, s in enumerate(seqs))


# ----------------------------------------------------------------------------- fusion
DIMS = {"image": 6, "text": 5, "audio": 4}


@functools.cache
def fusion(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_fusion(FusionConfig(name=name, dim=16, hidden=12, heads=2, dropout=0.0), DIMS, num_classes=7).eval()


@FAST
@given(st.sampled_from(sorted(FUSION.names())), st.integers(2, 5).flatmap(
    lambda b: st.tuples(st.just(b), st.permutations(list(range(b))), st.lists(st.integers(1, 4), min_size=b,
                                                                             max_size=b))),
       st.integers(0, 1000))
def test_fusion_is_invariant_to_batch_order(name, batch, seed):
    size, order, lengths = batch
    g = torch.Generator().manual_seed(seed)
    feats = {"image": torch.randn(size, 9, 6, generator=g), "text": torch.randn(size, 4, 5, generator=g),
             "audio": torch.randn(size, 4, generator=g)}
    masks = {"text": torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]}
    perm = torch.tensor(order)
    with torch.no_grad():
        out = fusion(name)(feats, masks)
        shuffled = fusion(name)({k: v[perm] for k, v in feats.items()}, {k: v[perm] for k, v in masks.items()})
    assert torch.allclose(out[perm], shuffled, atol=1e-5), name


def test_unsatisfiable_constraints_end_the_sequence_instead_of_emitting_banned_tokens():
    """A 2-word vocabulary cannot give 6 words without repeating one: both words, then <eos>."""
    step, state = toy_model(vocab=5, seed=0, rows=2)
    for strategy in ("greedy", "beam", "sample"):
        hyps = run(step, state, strategy=strategy, beam_size=2, max_len=8, min_len=6, no_repeat_ngram_size=1, seed=0)
        for per_input in hyps:
            assert per_input and sorted(per_input[0].tokens) == [3, 4], (strategy, per_input)
