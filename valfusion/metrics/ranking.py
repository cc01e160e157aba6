"""The per-chunk core of Recall@K: scores, the rank of the best correct target, the top-K list.

Everything here works on one chunk of ``C`` queries against the whole gallery of ``G``
items, so the largest temporary is the ``(C, G)`` score block. Inputs are trusted
(the public entry points in :mod:`valfusion.metrics.recall` validate them).

Ranking rule (the only one used anywhere in valfusion): a query's gallery items are
ordered by score, highest first, and items with *equal* scores by gallery index, lower
first. The rank of item ``j`` (0-based) is therefore

    rank(j) = #{i : s_i > s_j} + #{i < j : s_i = s_j}

over the items not excluded from the query's ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from valfusion.metrics._checks import SIMILARITIES

__all__ = [
    "SIMILARITIES",
    "PreparedGallery",
    "best_target",
    "chunk_scores",
    "mask_excluded",
    "prepare_gallery",
    "rank_of",
    "topk_by_rule",
]

# Sums of 0/1 in float32 are exact integers below 2**24; larger galleries count in float64.
_EXACT_FLOAT32_COUNT = 2**24
# Elements per row block of the counting passes (1 MiB of float32). The two masks of a
# block (2 MiB) stay in a core's L2 cache between the comparisons and the sum, and stay
# under glibc's mmap threshold, so they are not zero-filled afresh by the kernel on every
# call. Against 32 MiB blocks this took the worst case of benchmarks/bench_recall.py
# (random queries, every row counted, 1 thread) from about 1.35x to about 1.25x the
# GEMM + top-K ceiling (A/B in alternating rounds, session 11).
_BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class PreparedGallery:
    """The gallery in the form the score GEMM needs, computed once per evaluation.

    Attributes:
        matrix: gallery embeddings, ``(G, D)`` (the caller's tensor, not a copy).
        scale: per-item factor applied to the score columns, ``(G,)``, or None.
        shift: per-item offset subtracted from the score columns, ``(G,)``, or None.
        similarity: the similarity these columns implement.
    """

    matrix: Tensor
    scale: Tensor | None
    shift: Tensor | None
    similarity: str

    @property
    def size(self) -> int:
        """Number of gallery items ``G``."""
        return self.matrix.shape[0]


def prepare_gallery(gallery: Tensor, similarity: str, eps: float = 1e-12) -> PreparedGallery:
    """Precompute the per-item terms of the score so that a chunk needs one GEMM.

    The scores are ranking-equivalent forms of the similarities (a positive factor or an
    offset that is constant over a query's row changes no ranking):

    - ``dot``: ``s_ij = q_i . g_j``;
    - ``cosine``: ``s_ij = q_i . g_j / max(||g_j||, eps)`` (the factor ``1/||q_i||`` is dropped);
    - ``euclidean``: ``s_ij = q_i . g_j - ||g_j||^2 / 2`` (``= -(||q_i - g_j||^2 - ||q_i||^2) / 2``).

    No ``(G, D)`` copy is made: cosine and euclidean only keep a ``(G,)`` vector.

    Args:
        gallery: gallery embeddings, ``(G, D)``.
        similarity: one of :data:`SIMILARITIES`.
        eps: floor of the gallery norms for cosine (zero vectors score 0).

    Returns:
        The prepared gallery.
    """
    if similarity == "dot":
        return PreparedGallery(gallery, None, None, similarity)
    sq_norms = _squared_norms(gallery)
    if similarity == "cosine":
        scale = sq_norms.sqrt().clamp_min(eps).reciprocal()
        return PreparedGallery(gallery, scale, None, similarity)
    return PreparedGallery(gallery, None, sq_norms / 2, similarity)


def _squared_norms(x: Tensor, block_rows: int = 1 << 16) -> Tensor:
    # Sum of squares directly (not norm**2, which rounds twice), in row blocks so the
    # temporary stays small for million-item galleries.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    for start in range(0, x.shape[0], block_rows):
        block = x[start : start + block_rows].to(dtype)
        out[start : start + block_rows] = (block * block).sum(dim=1)
    return out


def chunk_scores(queries: Tensor, gallery: PreparedGallery) -> Tensor:
    """Scores of a chunk of queries against the whole gallery (one GEMM).

    Args:
        queries: query embeddings of the chunk, ``(C, D)``.
        gallery: the prepared gallery (``G`` items).

    Returns:
        Scores ``(C, G)`` in float32 (float64 for float64 inputs); a fresh tensor the
        caller may overwrite.
    """
    scores = queries @ gallery.matrix.T
    if scores.dtype not in (torch.float32, torch.float64):
        # Half-precision scores are ranked on their exact float32 values; the counting
        # in rank_of needs a float32 accumulator.
        scores = scores.float()
    if gallery.scale is not None:
        scores.mul_(gallery.scale.to(scores.dtype))
    if gallery.shift is not None:
        scores.sub_(gallery.shift.to(scores.dtype))
    return scores


def mask_excluded(scores: Tensor, exclude: Tensor) -> None:
    """Remove one gallery item per query from its ranking, in place (its score becomes -inf).

    Args:
        scores: ``(C, G)``, modified in place.
        exclude: gallery index per query, ``(C,)`` long; ``-1`` excludes nothing.
    """
    rows = (exclude >= 0).nonzero().squeeze(1)
    scores[rows, exclude[rows]] = float("-inf")


def best_target(scores: Tensor, targets: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The best-ranked correct target of each query: highest score, then lowest index.

    Args:
        scores: ``(C, G)`` (excluded items already masked).
        targets: correct gallery indices, ``(C, P)`` long, ``-1`` padding.
        exclude: excluded gallery index per query, ``(C,)`` long (``-1``: none), or None.
            A target equal to it is not a correct answer for that query.

    Returns:
        ``(score, index, found)``, each ``(C,)``: the best target's score and gallery
        index, and whether the query has any correct target left. Where ``found`` is
        False the score is 0 and the index ``G`` (placeholders).
    """
    num_queries, gallery_size = scores.shape
    if targets.shape[1] == 0:
        score = scores.new_zeros(num_queries)
        index = torch.full((num_queries,), gallery_size, dtype=torch.long, device=scores.device)
        return score, index, torch.zeros(num_queries, dtype=torch.bool, device=scores.device)
    valid = targets >= 0
    if exclude is not None:
        valid &= targets != exclude[:, None]
    target_scores = scores.gather(1, targets.clamp_min(0)).masked_fill_(~valid, float("-inf"))
    score = target_scores.amax(dim=1)
    found = valid.any(dim=1)
    is_best = valid & (target_scores == score[:, None])
    index = torch.where(is_best, targets, gallery_size).amin(dim=1)
    score = torch.where(found, score, 0.0)
    return score, index, found


def rank_of(scores: Tensor, score: Tensor, index: Tensor, rows: Tensor | None = None) -> Tensor:
    """0-based rank of one item per query under the ranking rule, in O(G) per query.

    ``rank = #{i : s_i > s} + #{i < index : s_i = s}``: per row, the counts of scores
    greater than and equal to ``s`` (no sort); the index-dependent tie term is evaluated
    only for the rare rows where another item has exactly the score ``s``. Rows go in
    blocks of about 1 MiB (one row when a row is larger) whose 0/1 masks land in one
    reusable buffer of two blocks, so nothing of size ``(C, G)`` is allocated.

    Args:
        scores: ``(C, G)`` (not modified).
        score: the score of the item to rank, ``(R,)`` (``R = C`` when ``rows`` is None).
        index: its gallery index, ``(R,)`` long.
        rows: which rows of ``scores`` to rank, ``(R,)`` long, or None for all of them.

    Returns:
        Ranks, ``(R,)`` long.
    """
    num_rows = scores.shape[0] if rows is None else rows.shape[0]
    gallery_size = scores.shape[1]
    # Float sums of 0/1 are exact integers below 2**24 in float32.
    count_dtype = scores.dtype if gallery_size < _EXACT_FLOAT32_COUNT else torch.float64
    block = min(max(1, _BLOCK_ELEMENTS // gallery_size), num_rows)
    masks = scores.new_empty(2, block, gallery_size)  # [greater, equal]
    counts = torch.empty(2, num_rows, dtype=count_dtype, device=scores.device)
    for start in range(0, num_rows, block):
        stop = min(start + block, num_rows)
        block_scores = scores[start:stop] if rows is None else scores.index_select(0, rows[start:stop])
        threshold = score[start:stop, None].to(scores.dtype)
        block_masks = masks[:, : stop - start]
        torch.gt(block_scores, threshold, out=block_masks[0])
        torch.eq(block_scores, threshold, out=block_masks[1])
        torch.sum(block_masks, dim=2, dtype=count_dtype, out=counts[:, start:stop])
    ranks = counts[0].round_().long()
    tied = (counts[1] > 1).nonzero().squeeze(1)
    if tied.numel():
        tied_rows = tied if rows is None else rows[tied]
        equal = scores[tied_rows] == score[tied, None].to(scores.dtype)
        earlier = torch.arange(gallery_size, device=scores.device) < index[tied, None]
        ranks[tied] += (equal & earlier).sum(dim=1)
    return ranks


def topk_by_rule(scores: Tensor, k: int) -> Tensor:
    """The first ``k`` gallery indices of each query under the ranking rule.

    ``torch.topk`` leaves the order of equal scores unspecified, so it is asked for one
    extra item. Without equal scores among those ``k + 1`` (the usual case) its order is
    already the rule's; otherwise the tied rows are re-ordered by (score descending,
    index ascending), and rows where the ``k``-th and ``(k+1)``-th scores tie, so that an
    unselected item might belong in the list, fall back to a stable full sort of the row.

    Args:
        scores: ``(C, G)`` (not modified).
        k: list length, ``1 <= k <= G``.

    Returns:
        Gallery indices, ``(C, k)`` long.
    """
    gallery_size = scores.shape[1]
    width = min(k + 1, gallery_size)
    values, indices = scores.topk(width, dim=1)
    tied = (values[:, 1:] == values[:, :-1]).any(dim=1).nonzero().squeeze(1)
    if tied.numel():
        tied_values, tied_indices = values[tied], indices[tied]
        tied_indices, order = tied_indices.sort(dim=1)
        tied_values = tied_values.gather(1, order)
        tied_values, order = tied_values.sort(dim=1, descending=True, stable=True)
        indices[tied] = tied_indices.gather(1, order)
        if width > k:
            boundary = tied[tied_values[:, k - 1] == tied_values[:, k]]
            if boundary.numel():
                full = scores[boundary].sort(dim=1, descending=True, stable=True).indices
                indices[boundary, :k] = full[:, :k]
    return indices[:, :k]
