"""The shared generate module: batched beam == per-image beam, n-best, sampling, constraints."""

from __future__ import annotations

import pytest
import torch

from polymodal.constrained import banned_ngram_tokens
from polymodal.errors import ConfigError
from polymodal.generate import GenerationConfig

from .conftest import tiny_model


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("decoder", ["attention_lstm", "seed_lstm"])
@pytest.mark.parametrize("beam", [1, 3, 5])
def test_batched_beam_equals_per_image_beam(decoder, beam):
    model = tiny_model(decoder)
    images = _images(6)
    cfg = GenerationConfig(strategy="beam", beam_size=beam, max_len=10, num_return_sequences=beam,
                           early_stopping=False)
    batched = model.generate(images, cfg)
    single = [model.generate(images[i:i + 1], cfg)[0] for i in range(len(images))]
    for b, s in zip(batched, single, strict=True):
        assert [h.tokens for h in b] == [h.tokens for h in s]
        assert [h.score for h in b] == pytest.approx([h.score for h in s], abs=1e-4)


def test_beam_one_equals_greedy():
    model = tiny_model()
    images = _images(4)
    beam = model.generate(images, GenerationConfig(strategy="beam", beam_size=1, max_len=10))
    greedy = model.generate(images, GenerationConfig(strategy="greedy", max_len=10))
    assert [b[0].tokens for b in beam] == [g[0].tokens for g in greedy]


def test_nbest_sorted_by_score_and_distinct():
    model = tiny_model()
    hyps = model.generate(_images(3), GenerationConfig(strategy="beam", beam_size=5, num_return_sequences=5,
                                                       max_len=8))
    for per_image in hyps:
        assert len(per_image) == 5
        scores = [h.score for h in per_image]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in per_image}) == 5


def test_beam_finds_at_least_the_greedy_score():
    model = tiny_model()
    images = _images(5)
    cfg = dict(max_len=10, length_penalty=0.0)
    greedy = model.generate(images, GenerationConfig(strategy="greedy", **cfg))
    beam = model.generate(images, GenerationConfig(strategy="beam", beam_size=4, early_stopping=False, **cfg))
    for g, b in zip(greedy, beam, strict=True):
        assert b[0].score >= g[0].score - 1e-5


def test_sampling_reproducible_with_seed_and_varies_without():
    model = tiny_model()
    images = _images(2)
    cfg = GenerationConfig(strategy="sample", seed=7, num_return_sequences=4, max_len=10, top_k=20)
    a = model.generate(images, cfg)
    b = model.generate(images, cfg)
    assert [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b]
    other = model.generate(images, GenerationConfig(strategy="sample", seed=8, num_return_sequences=4, max_len=10))
    assert [[h.tokens for h in x] for x in a] != [[h.tokens for h in x] for x in other]


def test_top_k_one_is_greedy():
    model = tiny_model()
    images = _images(3)
    sampled = model.generate(images, GenerationConfig(strategy="sample", top_k=1, seed=0, max_len=10))
    greedy = model.generate(images, GenerationConfig(strategy="greedy", max_len=10))
    assert [s[0].tokens for s in sampled] == [g[0].tokens for g in greedy]


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_obeyed(strategy):
    model = tiny_model(seed=3)
    n = 2
    hyps = model.generate(_images(4), GenerationConfig(strategy=strategy, no_repeat_ngram_size=n, max_len=12,
                                                       beam_size=3, seed=0))
    for per_image in hyps:
        for h in per_image:
            grams = [tuple(h.tokens[i:i + n]) for i in range(len(h.tokens) - n + 1)]
            assert len(grams) == len(set(grams)), h.tokens


def test_banned_ngrams_hand_case():
    history = torch.tensor([[5, 6, 5], [1, 2, 3]])
    assert banned_ngram_tokens(history, 2) == [[6], []]
    assert banned_ngram_tokens(history, 1) == [[5, 6, 5], [1, 2, 3]]


def test_min_len_and_special_tokens_respected():
    model = tiny_model()
    tok = model.tokenizer
    hyps = model.generate(_images(4), GenerationConfig(strategy="beam", beam_size=3, min_len=4, max_len=8))
    for per_image in hyps:
        assert len(per_image[0].tokens) >= 4
        assert tok.pad_id not in per_image[0].tokens and tok.bos_id not in per_image[0].tokens


def test_attention_returned_per_word():
    model = tiny_model()
    hyps = model.generate(_images(2), GenerationConfig(strategy="beam", beam_size=3, return_attention=True,
                                                       max_len=8))
    for per_image in hyps:
        h = per_image[0]
        assert h.attention.shape == (len(h.tokens), 16)  # 32 px / stride 8 -> 4 x 4 regions
        assert torch.allclose(h.attention.sum(-1), torch.ones(len(h.tokens)), atol=1e-5)


def test_bad_generation_config():
    with pytest.raises(ConfigError, match="did you mean 'beam'"):
        GenerationConfig(strategy="bean")
    with pytest.raises(ConfigError, match="num_return_sequences"):
        GenerationConfig(strategy="beam", beam_size=2, num_return_sequences=3)


def test_beam_search_leaves_unchanged_entries_alone_and_reorders_the_rest(monkeypatch):
    """Entries a step passes through are shared by an input's beams: beam search must not copy them, and
    the result must equal that of reordering every entry every step."""
    from polymodal import generate as generate_module
    from polymodal.generate import beam_search

    weights = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []

    def step(tokens, state):
        seen.append(state["image"])
        # scores depend on the row's history (its running sum) and on its input's fixed entry
        logits = torch.sin(state["total"][:, None] * weights[0] + state["image"] @ weights[1:, :] * 3)
        new = {**state, "total": state["total"] * 1.7 + tokens.float()}
        return logits, new, None

    state = {"image": torch.randn(3, 2, generator=torch.Generator().manual_seed(1)), "total": torch.zeros(3)}
    cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=6, num_return_sequences=3)
    hyps = beam_search(step, state, bos_id=1, eos_id=2, cfg=cfg)
    assert all(s is seen[0] for s in seen[1:]) and seen[0].shape == (9, 2)  # expanded once, never copied
    monkeypatch.setattr(generate_module, "reorder",
                        lambda st, rows, unchanged=frozenset(): {k: v.index_select(0, rows) for k, v in st.items()})
    reference = beam_search(step, state, bos_id=1, eos_id=2, cfg=cfg)
    assert [[(h.tokens, round(h.score, 5)) for h in r] for r in hyps] == \
        [[(h.tokens, round(h.score, 5)) for h in r] for r in reference]


@pytest.mark.parametrize("decoder", ["attention_lstm", "seed_lstm"])
def test_inputs_joining_a_running_beam_batch_get_their_offline_hypotheses(decoder):
    """Continuous batching: inputs that join between steps end exactly as in one offline batch."""
    model = tiny_model(decoder)
    images = _images(6)
    cfg = GenerationConfig(strategy="beam", beam_size=3, max_len=10, min_len=3, no_repeat_ngram_size=2,
                           num_return_sequences=2, return_attention=decoder == "attention_lstm")
    offline = model.generate(images, cfg)
    joins = {0: [0, 1], 1: [2], 4: [3, 4], 6: [5]}  # step -> inputs that join before it
    beams, ended, order = model.beam_batch(cfg), {}, []
    with torch.inference_mode():
        for step in range(40):
            if step in joins:
                beams.add(model.init_state(images[joins[step]]), joins[step])
            if beams:
                for key, hyps in beams.advance():
                    ended[key] = hyps
                    order.append(key)
    assert sorted(ended) == list(range(6)) and not beams
    for i in range(6):
        assert [h.tokens for h in ended[i]] == [h.tokens for h in offline[i]]
        assert [h.score for h in ended[i]] == pytest.approx([h.score for h in offline[i]], abs=1e-5)
        for a, b in zip(ended[i], offline[i], strict=True):
            assert (a.attention is None) == (b.attention is None)
            if a.attention is not None:
                assert a.attention.shape == (len(a.tokens), b.attention.shape[1])
                assert torch.allclose(a.attention, b.attention, atol=1e-5)


def test_states_that_cannot_share_a_batch_are_refused_by_name():
    from polymodal.generate import concat_states

    lstm = {"h": torch.zeros(2, 4), "c": torch.zeros(2, 4)}
    assert concat_states(lstm, lstm)["h"].shape == (4, 4)
    with pytest.raises(ValueError, match="'k0'"):
        concat_states({"k0": torch.zeros(2, 1, 3, 4)}, {"k0": torch.zeros(1, 1, 0, 4)})
    assert tiny_model("transformer").beam_batch(GenerationConfig(strategy="beam")) is None  # shared positions


@pytest.mark.parametrize("strategy, beam", [("greedy", 1), ("beam", 4), ("sample", 1)])
def test_banned_words_are_never_said_with_any_strategy_and_batch(strategy, beam):
    """A user's "must not mention": the words the unconstrained captions use most are banned; none comes back,
    in any of the n-best, whatever the strategy, batched."""
    import collections

    from polymodal.models.word_controls import banned_token_ids

    model = tiny_model()
    images = _images(6)
    cfg = dict(strategy=strategy, beam_size=beam, num_return_sequences=beam, max_len=10, seed=0)
    free = model.generate(images, GenerationConfig(**cfg))
    used = collections.Counter(t for per in free for h in per for t in h.tokens)
    words = [model.tokenizer.decode([t]) for t, _ in used.most_common(3)]
    banned = banned_token_ids(model.tokenizer, words)
    constrained = model.generate(images, GenerationConfig(**cfg, banned_ids=banned))
    assert banned and all(not set(h.tokens) & set(banned) for per in constrained for h in per)
    captions = model.caption_nbest(list(images), banned_words=words, strategy=strategy, beam_size=beam, seed=0)
    assert all(not set(c.split()) & set(words) for per in captions for c in per)


def test_a_word_the_tokenizer_splits_cannot_be_banned():
    from polymodal.errors import InputError
    from polymodal.models.word_controls import banned_token_ids
    from polymodal.text.tokenizer import WordTokenizer

    tok = WordTokenizer.build(["a red circle"])
    with pytest.raises(InputError, match="does not know the word 'zebra'"):  # a typo must not silently do nothing
        banned_token_ids(tok, ["zebra"])
    with pytest.raises(InputError, match="splits it into 2 tokens"):
        banned_token_ids(tok, ["red circle"])
