"""Batches of look-alike pairs: image-side hard negatives for contrastive training.

In a random batch a caption seldom meets an image that holds the same objects bound another way
("a purple square and a white circle" next to a picture of a white square and a purple circle), so
InfoNCE's text->image softmax never has to tell such images apart, and count-and-list queries stay
the weakest. `SimilarCaptionOrder` builds each epoch's order from small groups: a random pair, then
pairs whose captions share the most words with it (TF-IDF cosine over words; captions of the same
image and identical captions are left out, as they are positives anyway). Every pair still comes
once per epoch; consecutive groups fill a batch.

Finding the neighbours compares every distinct caption with every other once, in chunks, up to
`EXACT_LIMIT` captions or where every word is common (Shapes World: 72k distinct captions, ~30 s on one
core); above it (COCO's 600k captions would take hours) only captions that share a rare word are compared,
with work that grows as N (`approximate_nearest`; docs/scaling.md measures both).

Example:
    >>> order = SimilarCaptionOrder(["a red circle", "a blue circle", "a red star", "two squares"],
    ...                             owners=[0, 1, 2, 3], group=2)
    >>> sorted(order(torch.Generator().manual_seed(0)))
    [0, 1, 2, 3]
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..text.tokenizer import split_words

DENSE_LIMIT = 2**27  # entries of the (N, V) TF-IDF matrix up to which it is searched dense (512 MB)
# Up to EXACT_LIMIT distinct captions every pair is compared (~5 s at 10k on one thread); above it too where
# fewer than RARE_SHARE of the captions hold a rare word (Shapes World: ~40 words, all common, 13%), as the
# rare-word index then finds little.
EXACT_LIMIT = 10_000
RARE_SHARE = 0.5
BUDGET = 1000.0  # row pairs per caption that approximate_nearest's rare words may make


def tfidf_vectors(texts: Sequence[str], max_words: int = 4096) -> torch.Tensor:
    """(N, V) unit TF-IDF rows over the `max_words` words that most captions use, as a coalesced sparse
    COO tensor (a caption has a few words of thousands: dense, COCO's 600k captions would take 10 GB)."""
    docs = [Counter(split_words(t)) for t in texts]
    df = Counter(w for d in docs for w in d)
    vocab = {w: i for i, (w, _) in enumerate(df.most_common(max_words))}
    idf = {w: math.log(len(docs) / df[w]) + 1.0 for w in vocab}
    entries = [(row, vocab[w], n * idf[w]) for row, d in enumerate(docs) for w, n in d.items() if w in vocab]
    rows = torch.tensor([e[0] for e in entries], dtype=torch.long)
    cols = torch.tensor([e[1] for e in entries], dtype=torch.long)
    values = torch.tensor([e[2] for e in entries], dtype=torch.float)
    norms = torch.zeros(len(docs)).index_add_(0, rows, values**2).sqrt().clamp_min(1e-12)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values / norms[rows], (len(docs), len(vocab)),
                                   check_invariants=True).coalesce()


def nearest_texts(texts: Sequence[str], k: int, chunk: int = 1024, exact: bool | None = None) -> torch.Tensor:
    """(N, k) indices of each text's most similar other texts (TF-IDF cosine), most similar first.

    Up to `EXACT_LIMIT` texts, where fewer than `RARE_SHARE` of the texts hold a rare word, or with
    `exact=True`, every pair is compared (`exact_nearest`); otherwise mainly texts that share a rare word
    are (`approximate_nearest`), and a row may end in -1 where fewer than k candidates were found. `texts`
    should be distinct (a duplicate would be its twin's nearest text).

    Example:
        >>> nearest_texts(["a red circle", "a big red circle", "a blue star", "a big blue star"], k=1).tolist()
        [[1], [0], [3], [2]]
    """
    vectors = tfidf_vectors(texts)
    k = min(k, len(texts) - 1)
    if exact is None:
        exact = len(texts) <= EXACT_LIMIT or rare_word_share(vectors) < RARE_SHARE
    return exact_nearest(vectors, k, chunk) if exact else approximate_nearest(vectors, k)


def rare_word_share(vectors: torch.Tensor, budget: float = BUDGET) -> float:
    """The share of rows that hold a rare word (as `approximate_nearest` with this `budget` counts them)."""
    row, col = vectors.coalesce().indices()
    df = torch.bincount(col, minlength=vectors.shape[1])
    has = torch.zeros(vectors.shape[0], dtype=torch.bool)
    has[row[df[col] <= _rare_limit(df, budget * vectors.shape[0])]] = True
    return float(has.float().mean())


def exact_nearest(vectors: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) nearest rows of the unit rows `vectors` (sparse (N, V)) by cosine, comparing all pairs.

    N^2 work, in chunks of `chunk` rows: the reference that `approximate_nearest` is measured against.

    Example:
        >>> exact_nearest(tfidf_vectors(["a red circle", "a big red circle", "a blue star", "a big blue star"]), k=1).tolist()
        [[1], [0], [3], [2]]
    """
    n = vectors.shape[0]
    dense = n * vectors.shape[1] <= DENSE_LIMIT  # few words (Shapes World): dense is 2x faster
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is what we use of it
        warnings.simplefilter("ignore", UserWarning)
        matrix = vectors.to_dense() if dense else vectors.to_sparse_csr()  # CSR products: ~15x COO's speed
    out = torch.empty(n, max(k, 0), dtype=torch.long)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        if dense:
            sim = matrix[rows] @ matrix.T  # (c, N)
        else:  # work ~ N * words per caption * c
            sim = (matrix @ _dense_rows(vectors, start, start + len(rows)).T).T.contiguous()
        sim[torch.arange(len(rows)), rows] = -math.inf  # not itself
        out[rows] = sim.topk(k, dim=-1).indices
    return out


def approximate_nearest(vectors: torch.Tensor, k: int, budget: float = BUDGET, shortlist: int = 128,
                        words: int = 2, cap: int = 32, chunk: int = 1024) -> torch.Tensor:
    """(N, k) nearest rows of the unit rows `vectors` by cosine, among candidates found through rare words.

    A word is rare when the rows holding rare words, compared pairwise, make at most `budget` x N pairs
    (sum of df^2 over the rarest words), so the work grows as N, not N^2. Each row's candidates are (1) the
    rows that share a rare word with it, ranked by the part of the cosine those words give (exact, by a
    sparse product over the inverted index), the best `shortlist` kept; (2) for a row with fewer than k of
    those (all its words common), up to `cap` evenly spaced rows of each of its `words` rarest words. All
    candidates are then ranked by their exact cosine. Slots left over (fewer than k candidates) hold -1.

    Example:
        >>> approximate_nearest(tfidf_vectors(["a red circle", "a big red circle", "a blue star", "a big blue star"]), k=1).tolist()
        [[1], [0], [3], [2]]
    """
    vectors = vectors.coalesce()
    (n, v), (row, col), val = vectors.shape, vectors.indices(), vectors.values()
    row_ptr, df = _pointers(row, n), torch.bincount(col, minlength=v)
    by_word = torch.argsort(col, stable=True)
    postings, posting_val, word_ptr = row[by_word], val[by_word], _pointers(col[by_word], v)
    rare = df[col] <= _rare_limit(df, budget * n)
    rarest = torch.argsort(row * (n + 1) + df[col], stable=True)  # each row's entries, rarest word first
    rarest = rarest[torch.arange(len(row)) - row_ptr[row[rarest]] < words]
    query_row, query_word = row[rarest], col[rarest]
    query_ptr = _pointers(query_row, n)
    out = torch.full((n, max(k, 0)), -1, dtype=torch.long)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        lo, hi = int(row_ptr[start]), int(row_ptr[end])
        keep = rare[lo:hi]
        short = _rare_word_shortlist(row[lo:hi][keep], col[lo:hi][keep], val[lo:hi][keep], postings, posting_val,
                                     word_ptr, df, start, end, n, shortlist)
        q = torch.arange(start, end).repeat_interleave(shortlist)
        q, j = q[short.flatten() >= 0], short.flatten()[short.flatten() >= 0]
        lo, hi = int(query_ptr[start]), int(query_ptr[end])
        needy = (short[:, k - 1] < 0 if 0 < k <= shortlist else torch.ones(end - start, dtype=torch.bool))
        needy = needy[query_row[lo:hi] - start]
        cq, cj = _candidates(query_row[lo:hi][needy], query_word[lo:hi][needy], postings, word_ptr, df, cap)
        pair = torch.unique(torch.cat([q, cq]) * n + torch.cat([j, cj]))  # sorted by query, each pair once
        q, j = pair // n, pair % n
        q, j = q[q != j], j[q != j]  # not itself
        score = _pair_scores(_dense_rows(vectors, start, end), q - start, j, row_ptr, col, val)
        _top_k_into(out, q, j, score, k)
    return out


def _rare_limit(df: torch.Tensor, pairs: float) -> int:
    """The largest document frequency such that the words up to it give at most `pairs` row pairs (sum df^2)."""
    ordered = df.sort().values.double()
    fits = (ordered**2).cumsum(0) <= pairs
    return int(ordered[fits].max()) if bool(fits.any()) else 0


def _rare_word_shortlist(q: torch.Tensor, w: torch.Tensor, qv: torch.Tensor, postings: torch.Tensor,
                         posting_val: torch.Tensor, word_ptr: torch.Tensor, df: torch.Tensor, start: int, end: int,
                         n: int, size: int) -> torch.Tensor:
    """(end - start, size): for query rows start..end-1, whose rare-word entries are (q, w, qv), the rows
    sharing a rare word, by the sum of qv * value over the shared words (their part of the cosine), best first."""
    run, place = _expand(df[w])
    entry = word_ptr[w[run]] + place
    pair, inverse = torch.unique((q[run] - start) * n + postings[entry], return_inverse=True)
    partial = torch.zeros(len(pair)).index_add_(0, inverse, qv[run] * posting_val[entry])
    pq, pj = pair // n, pair % n
    other = pq + start != pj
    out = torch.full((end - start, size), -1, dtype=torch.long)
    _top_k_into(out, pq[other], pj[other], partial[other], size)
    return out


def _pointers(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n + 1,) offsets of each id's run in the ascending `sorted_ids` (a CSR row pointer)."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(sorted_ids, minlength=n).cumsum(0)])


def _expand(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For runs of `lengths`: the run of each slot and the slot's place in its run."""
    run = torch.repeat_interleave(lengths)
    return run, torch.arange(len(run)) - (lengths.cumsum(0) - lengths)[run]


def _candidates(q: torch.Tensor, w: torch.Tensor, postings: torch.Tensor, word_ptr: torch.Tensor,
                df: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, candidate) rows: up to `cap` evenly spaced rows of word w[i] for query q[i]."""
    taken = df[w].clamp(max=cap)
    run, place = _expand(taken)
    return q[run], postings[word_ptr[w[run]] + place * df[w[run]] // taken[run]]


def _pair_scores(queries: torch.Tensor, q: torch.Tensor, j: torch.Tensor, row_ptr: torch.Tensor,
                 col: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Cosine of each pair: dense query row q[i] (of `queries`) against sparse row j[i] (CSR arrays)."""
    pair, place = _expand(row_ptr[j + 1] - row_ptr[j])
    entry = row_ptr[j[pair]] + place
    terms = queries[q[pair], col[entry]] * val[entry]
    return torch.zeros(len(q)).index_add_(0, pair, terms)


def _top_k_into(out: torch.Tensor, q: torch.Tensor, j: torch.Tensor, score: torch.Tensor, k: int) -> None:
    """out[q, :k] = the k candidates j of each query q with the highest score, best first."""
    order = torch.argsort(q.double() * 4 - score.double())  # by query, then score descending (|score| <= 1)
    q, j = q[order], j[order]
    first = torch.ones(len(q), dtype=torch.bool)
    first[1:] = q[1:] != q[:-1]
    run_start = torch.cummax(torch.where(first, torch.arange(len(q)), 0), 0).values
    rank = torch.arange(len(q)) - run_start
    keep = rank < k
    out[q[keep], rank[keep]] = j[keep]


def _dense_rows(coo: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows start..end-1 of a coalesced sparse matrix (entries sorted by row), dense."""
    row, col = coo.indices()
    lo, hi = (int(i) for i in torch.searchsorted(row, torch.tensor([start, end])))
    out = torch.zeros(end - start, coo.shape[1])
    out[row[lo:hi] - start, col[lo:hi]] = coo.values()[lo:hi]
    return out


class SimilarCaptionOrder:
    """An epoch order made of groups of `group` pairs with look-alike captions (see the module doc).

    Neighbours are found among the distinct captions (after `split_words`), so a caption shared by
    many images costs one row; a group then takes, for each neighbouring caption, an unused pair of
    another image that has it.

    Args:
        texts: the caption of each dataset item.
        owners: the image (record) of each item; a group never holds two pairs of one image.
        group: items per group (1 = a plain shuffle); a batch of B holds about B / group groups.
        candidates: how many nearest captions a group is drawn from, at random, so the groups change
            from epoch to epoch.
    """

    def __init__(self, texts: Sequence[str], owners: Sequence[int], group: int = 4, candidates: int = 16):
        if len(texts) != len(owners):
            raise ValueError("one owner per text")
        if group < 1 or candidates < 1:
            raise ConfigError(f"similar batches: group={group}, candidates={candidates}; both must be >= 1")
        self.group, self.owners = group, list(owners)
        ids: dict[str, int] = {}
        self.text_of = [ids.setdefault(" ".join(split_words(t)), len(ids)) for t in texts]
        self.pairs_of: list[list[int]] = [[] for _ in ids]  # distinct caption -> the items that have it
        for item, text in enumerate(self.text_of):
            self.pairs_of[text].append(item)
        near = nearest_texts(list(ids), candidates).tolist() if group > 1 and len(ids) > 1 else [[] for _ in ids]
        self.neighbours = [[t for t in row if t >= 0] for row in near]  # -1: the approximate search found fewer

    def __call__(self, generator: torch.Generator) -> list[int]:
        """A permutation of range(N) in which each run of up to `group` items is a seed and its neighbours."""
        used = [False] * len(self.text_of)
        # each caption's items in a random order; `first_unused` skips those already taken
        pools = [[items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
                 for items in self.pairs_of]
        first_unused = [0] * len(pools)

        def take(text: int, owners: set[int]) -> int | None:
            """An unused item with caption `text` whose image is not among `owners`."""
            pool = pools[text]
            while first_unused[text] < len(pool) and used[pool[first_unused[text]]]:
                first_unused[text] += 1
            return next((i for i in pool[first_unused[text]:] if not used[i] and self.owners[i] not in owners), None)

        order: list[int] = []
        for seed in torch.randperm(len(used), generator=generator).tolist():
            if used[seed]:
                continue
            used[seed] = True
            group, owners = [seed], {self.owners[seed]}
            near = self.neighbours[self.text_of[seed]]
            for n in torch.randperm(len(near), generator=generator).tolist():
                if len(group) == self.group:
                    break
                item = take(near[n], owners)
                if item is not None:
                    used[item] = True
                    group.append(item)
                    owners.add(self.owners[item])
            order += group
        return order
