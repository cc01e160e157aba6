"""Recall@K for composed retrieval: exact, chunked over queries, one GEMM per chunk and no sort.

Recall@K is the fraction of queries whose best-ranked correct target is among the first
``K`` items of the query's ranking of the gallery:

    R@K = (1 / Q) * #{i : rank_i < K},   rank_i = min over correct targets j of rank_i(j)

with the ranking rule of :mod:`valfusion.metrics.ranking`: higher score first, equal
scores by lower gallery index first, the query's excluded item (its reference image)
removed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from valfusion._validation import check_size, fmt_shape
from valfusion.metrics._checks import (
    Missing,
    Similarity,
    check_embeddings,
    check_gallery,
    check_recall_options,
    check_same_kind,
)
from valfusion.metrics.protocols import RetrievalSetup
from valfusion.metrics.ranking import (
    PreparedGallery,
    best_target,
    chunk_scores,
    mask_excluded,
    prepare_gallery,
    rank_of,
    topk_by_rule,
)
from valfusion.metrics.targets import LabelTargets, chunk_targets, resolve_targets

__all__ = ["RecallResult", "recall_at_k"]


@dataclass(frozen=True, eq=False)
class RecallResult:
    """What :func:`recall_at_k` measured.

    Attributes:
        recall: ``{K: R@K}`` for each requested ``K`` (ascending), fractions in ``[0, 1]``.
        ranks: 0-based rank of each query's best-ranked correct target, ``(Q,)`` long;
            ``-1`` for a query without any correct target (only with ``missing="miss"``).
        topk_indices: the first ``min(max(ks), G)`` gallery indices of each query's
            ranking, ``(Q, min(max(ks), G))`` long, or None when not requested. A slot
            past the end of a query's ranking (the gallery minus its excluded item) is ``-1``.
        similarity: the similarity that produced the scores.
        gallery_size: number of gallery items ``G``.
        protocol: the gallery protocol (``"val"``, ``"original"``) when evaluated through a
            :class:`~valfusion.metrics.RetrievalSetup`, else None.
        gallery_hash: the setup's short hash of the sorted gallery ids, else None.
    """

    recall: dict[int, float]
    ranks: Tensor
    topk_indices: Tensor | None
    similarity: str
    gallery_size: int
    protocol: str | None = None
    gallery_hash: str | None = None

    @property
    def num_queries(self) -> int:
        """Number of evaluated queries ``Q``."""
        return self.ranks.shape[0]

    def as_dict(self, prefix: str = "recall@") -> dict[str, float]:
        """The recalls keyed ``"recall@K"`` (for loggers).

        Args:
            prefix: text before ``K`` in each key.

        Returns:
            ``{f"{prefix}{K}": R@K}`` for each ``K`` (ascending).
        """
        return {f"{prefix}{k}": value for k, value in self.recall.items()}


def recall_at_k(
    queries: Tensor,
    gallery: Tensor,
    *,
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]] | None = None,
    query_labels: Tensor | Sequence[Hashable] | None = None,
    gallery_labels: Tensor | Sequence[Hashable] | None = None,
    exclude: Tensor | Sequence[int] | None = None,
    setup: RetrievalSetup | None = None,
    ks: Sequence[int] = (1, 10, 50),
    similarity: Similarity = "cosine",
    chunk_size: int = 1024,
    missing: Missing | None = None,
    return_topk: bool = True,
) -> RecallResult:
    """Recall@K of ``queries`` against ``gallery``, exact under the documented tie rule.

    ``R@K = #{i : rank_i < K} / Q``, ``rank_i`` the 0-based rank of query ``i``'s best-ranked
    correct target in its ranking of the gallery (its excluded item removed).

    Correct targets come from exactly one of ``targets``, the label pair
    (``query_labels``, ``gallery_labels``), or ``setup`` (which also supplies ``exclude``
    and the protocol name, gallery size and hash copied into the result).

    Scores (ranking-equivalent forms): dot ``q . g``; cosine ``q . g / ||g||``;
    euclidean ``q . g - ||g||^2 / 2`` (i.e. ranking by ``-||q - g||^2``). Ties are broken by
    gallery index, lower first; ranks are computed on the scores as computed in floating
    point. The queries are processed ``chunk_size`` at a time: per chunk one GEMM, a
    top-K and two counting passes, so the working memory is one ``chunk_size x G`` float32
    score block plus a few MiB, never ``Q x G``; no ``(G, D)`` copy of the gallery is
    made.

    Args:
        queries: query embeddings, ``(Q, D)``, floating point, finite.
        gallery: gallery embeddings, ``(G, D)``, same dtype and device as ``queries``, finite,
            ``G >= 1``.
        targets: correct gallery indices per query: ``(Q,)`` or ``(Q, P)`` integer tensor
            with ``-1`` padding, a sequence of ``Q`` ints, or a sequence of ``Q`` index
            lists.
        query_labels: ``(Q,)`` labels; gallery item ``j`` is correct for query ``i`` iff
            ``gallery_labels[j] == query_labels[i]`` (integer tensors or sequences of
            hashable values).
        gallery_labels: ``(G,)`` labels, given together with ``query_labels``.
        exclude: gallery index removed from each query's ranking, ``(Q,)`` (``-1``: none),
            typically the query's reference image. An excluded target is not correct.
        setup: a :class:`~valfusion.metrics.RetrievalSetup` giving targets and exclusions.
        ks: cut-offs ``K >= 1``; ``K > G`` is allowed (every query with a correct target
            then counts as a hit).
        similarity: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        chunk_size: queries scored per GEMM (memory/speed trade-off; never changes the result).
        missing: what to do with a query that has no correct target left: ``"error"``
            (raise; the default, because skipping such queries inflates recall) or
            ``"miss"`` (rank ``-1``, counted as a miss at every K). None means ``"error"``,
            or the setup's policy when ``setup`` is given.
        return_topk: also return the top ``max(ks)`` gallery indices per query.

    Returns:
        A :class:`RecallResult`; ``ranks`` ``(Q,)``, ``topk_indices``
        ``(Q, min(max(ks), G))``.

    Raises:
        ValueError: bad shapes or dtypes, non-finite embeddings, indices out of range,
            ``K < 1``, an empty gallery, an unknown similarity or policy, ambiguous target
            sources, or (by default) a query without a correct target.
    """
    queries = check_embeddings(queries, "queries", "(Q, D)")
    gallery = check_gallery(gallery)
    if queries.shape[0] == 0:
        raise ValueError(f"queries: expected at least one query, got shape {fmt_shape(queries)}")
    check_size(gallery, "gallery", 1, queries.shape[1], "embedding dim D (as in queries)")
    check_same_kind(queries, "queries", gallery, "gallery")
    num_queries, gallery_size = queries.shape[0], gallery.shape[0]

    protocol = gallery_hash = None
    if setup is not None:
        if not isinstance(setup, RetrievalSetup):
            raise ValueError(f"setup: expected a RetrievalSetup, got {type(setup).__name__}")
        given = [n for n, v in (("targets", targets), ("query_labels", query_labels),
                                ("gallery_labels", gallery_labels), ("exclude", exclude)) if v is not None]
        if given:
            raise ValueError(f"setup: already defines targets and exclusions; do not also pass {given}")
        if gallery_size != setup.gallery_size:
            raise ValueError(
                f"gallery: the setup's gallery has G = {setup.gallery_size} items "
                f"(protocol {setup.protocol!r}), got shape {fmt_shape(gallery)}"
            )
        if num_queries != setup.num_queries:
            raise ValueError(
                f"queries: the setup has Q = {setup.num_queries} queries, got shape {fmt_shape(queries)}"
            )
        targets, exclude = setup.targets, setup.exclude
        protocol, gallery_hash = setup.protocol, setup.gallery_hash
        missing = setup.missing if missing is None else missing
    missing = "error" if missing is None else missing
    ks = check_recall_options(ks, similarity, chunk_size, missing)
    target_source, exclude = resolve_targets(
        targets, query_labels, gallery_labels, exclude, num_queries=num_queries,
        gallery_size=gallery_size, device=queries.device, missing=missing, chunk_size=chunk_size,
    )

    prepared = prepare_gallery(gallery, similarity)
    ranks, topk = rank_queries(
        queries, prepared, target_source, exclude,
        topk=max(ks) if return_topk else None, chunk_size=chunk_size,
    )
    return RecallResult(
        recall=recall_from_ranks(ranks, ks),
        ranks=ranks,
        topk_indices=topk,
        similarity=similarity,
        gallery_size=gallery_size,
        protocol=protocol,
        gallery_hash=gallery_hash,
    )


def rank_queries(
    queries: Tensor,
    gallery: PreparedGallery,
    targets: Tensor | LabelTargets,
    exclude: Tensor | None,
    *,
    topk: int | None,
    chunk_size: int,
) -> tuple[Tensor, Tensor | None]:
    """The chunked core shared by :func:`recall_at_k` and :class:`RecallAtK` (inputs trusted).

    Args:
        queries: ``(Q, D)``.
        gallery: prepared gallery of ``G`` items.
        targets: padded correct indices ``(Q, P)`` or a :class:`LabelTargets`.
        exclude: ``(Q,)`` long (``-1``: none) or None.
        topk: list length to return (clipped to ``G``), or None for no list.
        chunk_size: queries per GEMM.

    Returns:
        ``(ranks, topk_indices)``: ``(Q,)`` long with ``-1`` where no correct target is
        left; ``(Q, min(topk, G))`` long with ``-1`` for excluded slots, or None.
    """
    num_queries, gallery_size = queries.shape[0], gallery.size
    ranks = torch.empty(num_queries, dtype=torch.long, device=queries.device)
    width = None if topk is None else min(topk, gallery_size)
    lists = None if width is None else torch.empty(
        num_queries, width, dtype=torch.long, device=queries.device
    )
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        scores = chunk_scores(queries[start:stop], gallery)
        chunk_exclude = None if exclude is None else exclude[start:stop]
        if chunk_exclude is not None:
            mask_excluded(scores, chunk_exclude)
        score, index, found = best_target(scores, chunk_targets(targets, start, stop), chunk_exclude)
        chunk_ranks = torch.full_like(index, -1)
        to_count = found
        if lists is not None and width is not None:
            chunk_lists = topk_by_rule(scores, width)
            if chunk_exclude is not None and width == gallery_size:
                # The excluded item (score -inf) can only be listed, last, when the list
                # spans the whole gallery: that slot is past the end of the ranking.
                chunk_lists.masked_fill_(chunk_lists == chunk_exclude[:, None], -1)
            lists[start:stop] = chunk_lists
            # A best target inside the exactly ordered list has its position as rank
            # (gallery indices are unique in a list); only the others need counting.
            listed, position = (chunk_lists == index[:, None]).max(dim=1)
            chunk_ranks = torch.where(listed, position, chunk_ranks)
            to_count = found & ~listed
        rows = to_count.nonzero().squeeze(1)
        if 2 * rows.numel() > len(to_count):
            # Counting every row is cheaper than gathering most of them.
            chunk_ranks = torch.where(to_count, rank_of(scores, score, index), chunk_ranks)
        elif rows.numel():
            chunk_ranks[rows] = rank_of(scores, score[rows], index[rows], rows=rows)
        ranks[start:stop] = chunk_ranks
        del scores  # free this block before the next chunk's GEMM allocates its own
    return ranks, lists


def recall_from_ranks(ranks: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """``{K: mean(0 <= rank < K)}`` from best-target ranks ``(Q,)`` (``-1`` = miss), ``Q >= 1``."""
    hit_rank = torch.where(ranks >= 0, ranks, torch.iinfo(torch.long).max)
    return {k: (hit_rank < k).double().mean().item() for k in ks}
