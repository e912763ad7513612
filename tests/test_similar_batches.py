"""Batches of look-alike captions (train/similar_batches.py) and the trainer's epoch-order hook."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.train import distributed, similar_batches
from polymodal.train.similar_batches import SimilarCaptionOrder, nearest_texts, tfidf_vectors
from polymodal.train.trainer import EpochBatchSampler

TEXTS = ["a red circle and a blue square", "three yellow stars", "a blue circle and a red square",
         "four yellow stars", "a green triangle above a white diamond", "a white triangle above a green diamond"]


def test_tfidf_rows_are_unit_vectors_and_rare_words_weigh_more():
    v = tfidf_vectors(["a red circle", "a blue circle", "a red star"]).to_dense()
    assert torch.allclose(v.norm(dim=-1), torch.ones(3))
    # "star" (1 caption) weighs more than "a" (3 captions) in the third row
    assert (v[2] > 0).sum() == 3 and v[2].max() > v[2][v[0] > 0].min()


def test_nearest_texts_are_the_ones_sharing_most_words_and_never_itself():
    near = nearest_texts(TEXTS, k=1)
    assert near[:, 0].tolist() == [2, 3, 0, 1, 5, 4]


def test_order_is_a_permutation_made_of_neighbour_groups():
    order = SimilarCaptionOrder(TEXTS, owners=range(6), group=2, candidates=1)(torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(6))
    groups = {frozenset(order[i:i + 2]) for i in range(0, 6, 2)}
    assert groups == {frozenset({0, 2}), frozenset({1, 3}), frozenset({4, 5})}


def test_groups_skip_the_same_image_and_identical_captions():
    # items 0 and 1 belong to one image; item 2 repeats item 0's caption on another image
    texts = ["a red circle", "a red star", "a red circle", "a blue circle", "a red square"]
    order = SimilarCaptionOrder(texts, owners=[0, 0, 1, 2, 3], group=3, candidates=4)
    for seed in range(20):
        items = order(torch.Generator().manual_seed(seed))
        assert sorted(items) == list(range(5))
        first = items[:3]
        assert len({[0, 0, 1, 2, 3][i] for i in first}) == 3  # three different images
        assert len({texts[i] for i in first}) == 3             # and three different captions


def test_order_depends_only_on_the_generator():
    order = SimilarCaptionOrder(TEXTS * 5, owners=range(30), group=3)
    a, b = order(torch.Generator().manual_seed(1)), order(torch.Generator().manual_seed(1))
    assert a == b and a != order(torch.Generator().manual_seed(2))
    plain = SimilarCaptionOrder(TEXTS, range(6), group=1)  # a plain shuffle: no neighbours computed
    assert sorted(plain(torch.Generator().manual_seed(0))) == list(range(6))
    with pytest.raises(ConfigError, match="group"):
        SimilarCaptionOrder(TEXTS, range(6), group=0)


def test_the_sampler_batches_the_order_and_resumes_inside_it():
    order = SimilarCaptionOrder(TEXTS * 4, owners=range(24), group=2)
    sampler = EpochBatchSampler(24, 4, seed=3, epoch=1, order=order)
    batches = sampler.batches()
    drawn = order(distributed.epoch_generator(3, 1))  # the sampler's (seed, epoch)
    assert batches == [drawn[i:i + 4] for i in range(0, 24, 4)]
    assert list(EpochBatchSampler(24, 4, seed=3, epoch=1, start=2, order=order)) == batches[2:]
    assert EpochBatchSampler(24, 4, seed=3, epoch=2, order=order).batches() != batches


def test_chunked_search_finds_the_nearest_neighbours(monkeypatch):
    import random

    rng = random.Random(0)
    words = "a red blue green circle square star large small two three left of above".split()
    texts = list(dict.fromkeys(" ".join(rng.choices(words, k=rng.randint(2, 7))) for _ in range(80)))
    dense = tfidf_vectors(texts).to_dense()
    sim = dense @ dense.T
    sim.fill_diagonal_(-float("inf"))
    for limit in (0, 2**27):  # searched sparse, then dense
        monkeypatch.setattr(similar_batches, "DENSE_LIMIT", limit)
        near = nearest_texts(texts, k=3, chunk=7)  # chunks that do not divide N
        assert torch.allclose(sim.gather(1, near), sim.topk(3, dim=-1).values)


def _zipf_captions(n: int, vocab: int, lengths: tuple[int, int], seed: int = 0) -> list[str]:
    """n distinct captions of `lengths` words drawn with weights 1/rank: rare words like COCO's."""
    import itertools
    import random

    rng = random.Random(seed)
    words, weights = [f"w{i}" for i in range(vocab)], list(itertools.accumulate(1 / (r + 1) for r in range(vocab)))
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choices(words, cum_weights=weights, k=rng.randint(*lengths)))] = None
    return list(out)


def test_approximate_search_agrees_with_the_exact_one():
    vectors = tfidf_vectors(_zipf_captions(1500, 800, (5, 9)))
    exact = similar_batches.exact_nearest(vectors, k=8, chunk=256)
    dense = vectors.to_dense()
    sim = dense @ dense.T
    # every word rare (no budget) and every candidate kept: all captions sharing a word are compared, so the
    # same cosines
    full = similar_batches.approximate_nearest(vectors, k=8, budget=float("inf"), shortlist=1500, chunk=100)
    assert torch.allclose(sim.gather(1, full), sim.gather(1, exact), atol=1e-6)
    # the defaults (1000 pairs per caption through rare words, 128 kept): most of the exact neighbours, never itself
    near = similar_batches.approximate_nearest(vectors, k=8)
    overlap = sum(len(set(a) & set(e)) for a, e in zip(near.tolist(), exact.tolist(), strict=True)) / exact.numel()
    assert overlap > 0.8
    assert not (near == torch.arange(1500)[:, None]).any()


def test_approximate_groups_still_skip_the_same_image_and_identical_captions(monkeypatch):
    monkeypatch.setattr(similar_batches, "EXACT_LIMIT", 0)  # the approximate search, even for 4 captions
    test_groups_skip_the_same_image_and_identical_captions()
    texts = ["a red circle", "a red star", "a red circle", "a blue circle", "a red square"]
    order = SimilarCaptionOrder(texts, owners=[0, 0, 1, 2, 3], group=3, candidates=4)
    assert all(-1 not in near for near in order.neighbours)


def test_a_50k_caption_set_takes_the_approximate_search_and_gives_a_valid_order(monkeypatch):
    calls = []
    approximate = similar_batches.approximate_nearest
    monkeypatch.setattr(similar_batches, "approximate_nearest", lambda *a, **kw: calls.append(1) or approximate(*a, **kw))
    texts = _zipf_captions(50_000, 20_000, (3, 5))
    order = SimilarCaptionOrder(texts, owners=[i // 5 for i in range(50_000)], group=4, candidates=8)
    assert calls == [1]
    items = order(torch.Generator().manual_seed(0))
    assert sorted(items) == list(range(50_000))
    # groups are look-alikes: neighbours in the order share a word far more often than in a shuffle
    def shared(order: list[int]) -> int:
        return sum(bool(set(texts[a].split()) & set(texts[b].split())) for a, b in zip(order[:4000], order[1:4001], strict=True))

    assert shared(items) > shared(torch.randperm(50_000).tolist()) + 800
