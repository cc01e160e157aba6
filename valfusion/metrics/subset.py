"""Rankings restricted to a candidate subset per query (CIRR's Recall_subset@K), and top-K lists.

CIRR gives every query a small set of images (``img_set.members``: 6 images, the
reference and the target among them). Recall_subset@K ranks only the query's subset,
its excluded item (the reference) removed, so 5 candidates:

    R_subset@K = (1 / Q) * #{i : rank_i < K},
    rank_i = #{j in S_i \\ {e_i} : s_ij > s_it} + #{j in S_i \\ {e_i} : s_ij = s_it, j < t}

for query ``i`` with subset ``S_i``, excluded item ``e_i`` and target ``t``: the ranking
rule of :mod:`valfusion.metrics.ranking` (higher score first, equal scores by lower
gallery index) applied to the subset only. Scores are those of
:func:`~valfusion.metrics.recall_at_k` (``cosine``, ``dot`` or ``euclidean``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from valfusion._validation import check_positive_int, check_size, fmt_shape
from valfusion.metrics._checks import (
    Missing,
    Similarity,
    check_embeddings,
    check_gallery,
    check_recall_options,
    check_same_kind,
)
from valfusion.metrics.ranking import chunk_scores, mask_excluded, prepare_gallery, topk_by_rule
from valfusion.metrics.recall import RecallResult, recall_from_ranks
from valfusion.metrics.targets import as_exclude, as_padded_targets

__all__ = ["recall_subset", "top_k"]


def _check_inputs(queries: object, gallery: object) -> tuple[Tensor, Tensor]:
    queries = check_embeddings(queries, "queries", "(Q, D)")
    gallery = check_gallery(gallery)
    if queries.shape[0] == 0:
        raise ValueError(f"queries: expected at least one query, got shape {fmt_shape(queries)}")
    check_size(gallery, "gallery", 1, queries.shape[1], "embedding dim D (as in queries)")
    check_same_kind(queries, "queries", gallery, "gallery")
    return queries, gallery


def _subset_order(scores: Tensor, subsets: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each row's subset in ranking order: ``(gallery indices (C, S), valid (C, S))``.

    Invalid slots (``-1`` padding, the excluded item) come last with ``valid`` False.
    """
    gallery_size = scores.shape[1]
    valid = subsets >= 0
    if exclude is not None:
        valid &= subsets != exclude[:, None]
    index = torch.where(valid, subsets, gallery_size)
    index, order = index.sort(dim=1)  # lower gallery index first ...
    valid = valid.gather(1, order)
    values = scores.gather(1, index.clamp_max(gallery_size - 1)).masked_fill_(~valid, float("-inf"))
    # ... then a stable sort by score keeps that order among equal scores; invalid slots
    # (-inf) go after every valid one, whose scores are finite.
    _, order = values.sort(dim=1, descending=True, stable=True)
    return index.gather(1, order), valid.gather(1, order)


def top_k(
    queries: Tensor,
    gallery: Tensor,
    *,
    k: int,
    exclude: Tensor | Sequence[int] | None = None,
    subsets: Tensor | Sequence[Sequence[int]] | None = None,
    similarity: Similarity = "cosine",
    chunk_size: int = 1024,
) -> Tensor:
    """The first ``k`` gallery indices of each query's ranking (of the gallery, or of its subset).

    Ranking rule of :func:`~valfusion.metrics.recall_at_k`: higher score first, equal
    scores by lower gallery index, the query's excluded item removed. With ``subsets``
    only the query's subset members are ranked (CIRR's ``img_set``).

    Args:
        queries: query embeddings, ``(Q, D)``, floating point, finite.
        gallery: gallery embeddings, ``(G, D)``, same dtype and device, finite, ``G >= 1``.
        k: list length, ``>= 1``.
        exclude: gallery index removed from each query's ranking, ``(Q,)`` (``-1``: none).
        subsets: gallery indices each query ranks, ``(Q, S)`` with ``-1`` padding or
            ``Q`` index lists; None ranks the whole gallery.
        similarity: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        chunk_size: queries scored per GEMM (never changes the result).

    Returns:
        ``(Q, min(k, G))`` long (``(Q, min(k, S))`` with subsets); a slot past the end of
        a query's ranking is ``-1``.

    Raises:
        ValueError: bad shapes, dtypes or indices, non-finite embeddings, ``k < 1``.
    """
    queries, gallery = _check_inputs(queries, gallery)
    check_positive_int(k, "k")
    check_recall_options((k,), similarity, chunk_size, "miss")
    num_queries, gallery_size = queries.shape[0], gallery.shape[0]
    device = queries.device
    excluded = None if exclude is None else as_exclude(exclude, num_queries, gallery_size, device)
    members = None if subsets is None else as_padded_targets(subsets, num_queries, gallery_size, device, "subsets")
    width = min(k, gallery_size if members is None else members.shape[1])
    prepared = prepare_gallery(gallery, similarity)
    lists = torch.empty(num_queries, width, dtype=torch.long, device=device)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = chunk_scores(queries[start:stop], prepared)
        chunk_exclude = None if excluded is None else excluded[start:stop]
        if members is None:
            if chunk_exclude is not None:
                mask_excluded(scores, chunk_exclude)
            chunk = topk_by_rule(scores, width)
            if chunk_exclude is not None and width == gallery_size:
                chunk.masked_fill_(chunk == chunk_exclude[:, None], -1)
        else:
            ordered, valid = _subset_order(scores, members[start:stop], chunk_exclude)
            chunk = ordered.masked_fill(~valid, -1)[:, :width]
        lists[start:stop] = chunk
    return lists


def recall_subset(
    queries: Tensor,
    gallery: Tensor,
    *,
    subsets: Tensor | Sequence[Sequence[int]],
    targets: Tensor | Sequence[int],
    exclude: Tensor | Sequence[int] | None = None,
    ks: Sequence[int] = (1, 2, 3),
    similarity: Similarity = "cosine",
    chunk_size: int = 1024,
    missing: Missing = "error",
    return_topk: bool = True,
) -> RecallResult:
    """Recall_subset@K: Recall@K where each query ranks only its own candidate subset.

    ``R_subset@K = #{i : rank_i < K} / Q`` with ``rank_i`` the 0-based rank of query
    ``i``'s target among its subset members, its excluded item removed (formula in the
    module docstring). CIRR: the subset is ``img_set.members`` (6 images), the excluded
    item the reference, so 5 candidates and ``ks = (1, 2, 3)``.

    Args:
        queries: query embeddings, ``(Q, D)``, floating point, finite.
        gallery: gallery embeddings, ``(G, D)``, same dtype and device, finite, ``G >= 1``.
        subsets: gallery indices each query ranks, ``(Q, S)`` long with ``-1`` padding, or
            ``Q`` index lists.
        targets: the correct gallery index of each query, ``(Q,)`` or ``Q`` ints.
        exclude: gallery index removed from each query's subset, ``(Q,)`` (``-1``: none).
        ks: cut-offs ``K >= 1``.
        similarity: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        chunk_size: queries scored per GEMM (never changes the result).
        missing: a target outside its query's subset, or equal to its excluded item:
            ``"error"`` raises, ``"miss"`` counts it as a miss (rank ``-1``).
        return_topk: also return each query's first ``max(ks)`` subset members.

    Returns:
        A :class:`~valfusion.metrics.RecallResult`: ``recall`` ``{K: R_subset@K}``,
        ``ranks`` ``(Q,)`` (rank within the subset), ``topk_indices``
        ``(Q, min(max(ks), S))`` gallery indices (``-1`` past the end of the subset's
        ranking) or None.

    Raises:
        ValueError: bad shapes, dtypes or indices, non-finite embeddings, ``K < 1``, or (by
            default) a target that is not a candidate of its query.
    """
    queries, gallery = _check_inputs(queries, gallery)
    ks = check_recall_options(ks, similarity, chunk_size, missing)
    num_queries, gallery_size = queries.shape[0], gallery.shape[0]
    device = queries.device
    members = as_padded_targets(subsets, num_queries, gallery_size, device, "subsets")
    target = as_padded_targets(targets, num_queries, gallery_size, device)
    if target.shape[1] != 1:
        raise ValueError(f"targets: expected one gallery index per query, got shape {fmt_shape(target)}")
    excluded = None if exclude is None else as_exclude(exclude, num_queries, gallery_size, device)
    prepared = prepare_gallery(gallery, similarity)
    ranks = torch.empty(num_queries, dtype=torch.long, device=device)
    width = min(max(ks), members.shape[1])
    lists = torch.empty(num_queries, width, dtype=torch.long, device=device) if return_topk else None
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = chunk_scores(queries[start:stop], prepared)
        chunk_exclude = None if excluded is None else excluded[start:stop]
        ordered, valid = _subset_order(scores, members[start:stop], chunk_exclude)
        hit = valid & (ordered == target[start:stop])
        found, position = hit.max(dim=1)
        ranks[start:stop] = torch.where(found, position, -1)
        if lists is not None:
            lists[start:stop] = ordered.masked_fill(~valid, -1)[:, :width]
    if missing == "error" and bool((ranks < 0).any()):
        bad = (ranks < 0).nonzero().squeeze(1)
        first = int(bad[0])
        raise ValueError(
            f"targets: {bad.numel()} of {num_queries} queries have a target that is not among "
            f"their subset's candidates (absent, or equal to the excluded item), e.g. query "
            f"{first} (target {int(target[first, 0])}); pass missing='miss' to count them as misses"
        )
    return RecallResult(
        recall=recall_from_ranks(ranks, ks),
        ranks=ranks,
        topk_indices=lists,
        similarity=similarity,
        gallery_size=gallery_size,
    )
