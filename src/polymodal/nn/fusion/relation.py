"""A cheap relation network over a few question-selected regions: what "is the circle left of the square?"
needs.

Relation networks (Santoro et al. 2017, https://arxiv.org/abs/1706.01427, eq. 1) answer relational
questions with RN(O) = f(sum_ij g([o_i, o_j, q])) over all pairs of objects. Over all 8 x 8 regions
that is 4096 pairs per image; Shapes World has 1-4 objects, so the question first selects k objects
("slots"), each a softmax-weighted mean of the regions under its own question-conditioned score, and
g sees the k * k pairs. Each region carries its raw (x, y) grid position, so g can compare two
positions linearly (x_i - x_j); the question scales and shifts g's first layer (FiLM), so "left" can
flip the sign of that comparison.

Why soft slots and not a hard top-k: with the top-k regions by a learned score (gated by its sigmoid
so that the score gets a gradient) only 3 % of the picked regions lay on an object after 500 steps
(10 % of all regions do): regions outside the top k get no gradient. A softmax over all regions
gives every region one, but on Shapes World the slots still mostly miss the named objects and the
module gives no clear gain yet (docs/vqa.md).

Example:
    >>> head = RelationHead(obj_dim=8, q_dim=4, hidden=16, out_dim=12, slots=3)
    >>> regions, xy = torch.randn(2, 9, 8), grid_xy(9, torch.device("cpu"))
    >>> head(regions, xy, torch.randn(2, 5, 4)).shape  # 5 question words
    torch.Size([2, 12])
"""

from __future__ import annotations

import math

import torch
from torch import nn


def grid_xy(n: int, device: torch.device) -> torch.Tensor:
    """(1, n, 2) centre (x, y) in [-1, 1] of each of n = side * side grid cells, row by row; n that is
    not a square (a sequence, one vector) is numbered along x with y = 0."""
    side = math.isqrt(n)
    if side * side != n:
        xs = torch.linspace(-1, 1, n, device=device) if n > 1 else torch.zeros(1, device=device)
        return torch.stack([xs, torch.zeros_like(xs)], dim=-1)[None]
    axis = (torch.arange(side, device=device) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)[None]


class RelationHead(nn.Module):
    """Select k objects for a question, then f(mean_ij g([o_i, xy_i, o_j, xy_j] | q)).

    Args:
        obj_dim: width of an object (region) feature; its (x, y) is appended.
        q_dim: width of the question vector.
        hidden: width of g (and of f's input).
        out_dim: width of the result.
        slots: objects selected per example (k; k * k pairs).
    """

    def __init__(self, obj_dim: int, q_dim: int, hidden: int, out_dim: int, slots: int = 4, dropout: float = 0.0):
        super().__init__()
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.score = nn.Linear(obj_dim, 1)                  # question-independent objectness, shared by slots
        self.slot_words = nn.Linear(q_dim, slots)          # slot s reads its own words ("the circle")
        self.slot_query = nn.Linear(q_dim, obj_dim)        # ... and scores region n by <W q_s, o_n>
        # g's first layer on [o_i, o_j] is split in two so it costs k + k products, not k * k.
        self.g_left = nn.Linear(obj_dim + 2, hidden)
        self.g_right = nn.Linear(obj_dim + 2, hidden, bias=False)
        self.g_question = nn.Linear(q_dim, 2 * hidden)     # FiLM: scale and shift of g's first layer
        self.g_out = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU())
        self.f = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, out_dim), nn.ReLU())
        self.out_dim = out_dim

    def select(self, objects: torch.Tensor, xy: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None,
               word_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k selected objects with their mean positions (B, K, C + 2) and the selection (B, K, N)."""
        b, n, c = objects.shape
        reads = self.slot_words(words).transpose(1, 2)  # (B, K, T)
        if word_mask is not None:
            reads = reads.masked_fill(~word_mask.unsqueeze(1), float("-inf"))
        queries = self.slot_query(reads.softmax(dim=-1) @ words)  # (B, K, C)
        scores = queries @ objects.transpose(1, 2) / math.sqrt(c) + self.score(objects).transpose(1, 2)  # (B, K, N)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))  # padding is never selected
        attention = scores.softmax(dim=-1)
        regions = torch.cat([objects, xy.expand(b, -1, -1)], dim=-1)  # (B, N, C + 2)
        if mask is not None:
            regions = regions.masked_fill(~mask.unsqueeze(-1), 0.0)  # 0 * inf would be nan
        return attention @ regions, attention

    def relate(self, picked: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """Relation features (B, out_dim) of selected objects (B, K, C + 2); symmetric in the K objects."""
        gamma, beta = self.g_question(question)[:, None, None].chunk(2, dim=-1)  # (B, 1, 1, H) each
        pair = self.g_left(picked).unsqueeze(2) + self.g_right(picked).unsqueeze(1)  # (B, K, K, H): pair (i, j)
        pairs = self.g_out((1 + gamma) * pair + beta).mean(dim=(1, 2))  # (B, H)
        return self.f(pairs)

    def forward(self, objects: torch.Tensor, xy: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        """objects (B, N, C), xy (1 or B, N, 2), question words (B, T, Q), masks (B, N) and (B, T) True at real
        objects and words -> (B, out_dim). g is conditioned on the mean of the words."""
        picked, _ = self.select(objects, xy, words, mask, word_mask)
        word_mask = torch.ones(words.shape[:2], dtype=torch.bool, device=words.device) if word_mask is None else word_mask
        m = word_mask.unsqueeze(-1).to(words.dtype)
        return self.relate(picked, (words * m).sum(1) / m.sum(1).clamp_min(1.0))
