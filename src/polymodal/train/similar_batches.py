"""Batches of look-alike pairs: image-side hard negatives for contrastive training.

In a random batch a caption seldom meets an image that holds the same objects bound another way
("a purple square and a white circle" next to a picture of a white square and a purple circle), so
InfoNCE's text->image softmax never has to tell such images apart, and count-and-list queries stay
the weakest. `SimilarCaptionOrder` builds each epoch's order from small groups: a random pair, then
pairs whose captions share the most words with it (TF-IDF cosine over words; captions of the same
image and identical captions are left out, as they are positives anyway). Every pair still comes
once per epoch; consecutive groups fill a batch.

Finding the neighbours compares every distinct caption with every other once, in chunks: N^2 * V work for N
distinct captions and V words (about 40 s for Shapes World's 120k pairs, 72k distinct captions, on one core).

Example:
    >>> order = SimilarCaptionOrder(["a red circle", "a blue circle", "a red star", "two squares"],
    ...                             owners=[0, 1, 2, 3], group=2)
    >>> sorted(order(torch.Generator().manual_seed(0)))
    [0, 1, 2, 3]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..text.tokenizer import split_words

DENSE_LIMIT = 2**27  # entries of the (N, V) TF-IDF matrix up to which it is searched dense (512 MB)


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


def nearest_texts(texts: Sequence[str], k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) indices of each text's most similar other texts (TF-IDF cosine), most similar first.

    `texts` should be distinct (a duplicate would be its twin's nearest text)."""
    vectors = tfidf_vectors(texts)
    if vectors.shape[0] * vectors.shape[1] <= DENSE_LIMIT:  # few words (Shapes World): dense is 2x faster
        vectors = vectors.to_dense()
    k = min(k, len(texts) - 1)
    out = torch.empty(len(texts), max(k, 0), dtype=torch.long)
    for start in range(0, len(texts), chunk):
        rows = torch.arange(start, min(start + chunk, len(texts)))
        if vectors.is_sparse:  # work ~ N * words per caption * c
            sim = torch.sparse.mm(vectors, _dense_rows(vectors, start, start + len(rows)).T).T.contiguous()
        else:
            sim = vectors[rows] @ vectors.T  # (c, N)
        sim[torch.arange(len(rows)), rows] = -math.inf  # not itself
        out[rows] = sim.topk(k, dim=-1).indices
    return out


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
        self.neighbours = (nearest_texts(list(ids), candidates).tolist() if group > 1 and len(ids) > 1
                           else [[] for _ in ids])

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
