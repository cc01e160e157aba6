"""``RecallAtK``: Recall@K as a ``torchmetrics.Metric``, batch by batch, distributed-ready.

Each ``update`` ranks its batch of queries against the (fixed) gallery right away and
stores only the ``(B,)`` best-target ranks. The rank list is a ``"cat"`` state, so under
DDP ``compute`` gathers the ranks of every process and all of them report the recall of
the whole query set; no user code is needed beyond giving each process the same gallery.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from valfusion._validation import (
    check_floating,
    check_ndim,
    check_positive_int,
    check_size,
    fmt_shape,
)
from valfusion.metrics.ranking import SIMILARITIES, PreparedGallery, prepare_gallery
from valfusion.metrics.recall import (
    MISSING_POLICIES,
    check_all_found,
    check_choice,
    check_finite,
    check_ks,
    rank_queries,
    recall_from_ranks,
    resolve_targets,
)
from valfusion.metrics.targets import as_exclude

__all__ = ["RecallAtK"]


class RecallAtK(Metric):
    """Recall@K over batches of queries against a gallery given once.

    ``R@K = #{queries whose best-ranked correct target has rank < K} / #queries``, with
    the ranking rule of :func:`~valfusion.metrics.recall_at_k` (score descending, ties by
    lower gallery index, each query's excluded item removed).

    Example::

        metric = RecallAtK(gallery_embeddings, ks=(10, 50))
        for batch in loader:
            metric.update(model(batch), targets=batch.target_index, exclude=batch.reference_index)
        metric.compute()  # {"recall@10": tensor(..), "recall@50": tensor(..)}

    Args:
        gallery: gallery embeddings ``(G, D)``, or None to give them later with
            :meth:`set_gallery`.
        gallery_labels: ``(G,)`` labels when targets are given by label in :meth:`update`.
        ks: cut-offs ``K >= 1``.
        similarity: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        chunk_size: queries per GEMM inside an update.
        missing: ``"error"`` (a query without a correct target raises in :meth:`update`) or
            ``"miss"`` (it counts as a miss).
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Raises:
        ValueError: bad ``ks``, ``similarity``, ``chunk_size`` or ``missing``, or a bad gallery.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    ranks: list[Tensor]
    gallery: Tensor | None

    def __init__(
        self,
        gallery: Tensor | None = None,
        *,
        gallery_labels: Tensor | Sequence[Hashable] | None = None,
        ks: Sequence[int] = (1, 10, 50),
        similarity: Literal["cosine", "dot", "euclidean"] = "cosine",
        chunk_size: int = 1024,
        missing: Literal["error", "miss"] = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ks = check_ks(ks)
        check_choice(similarity, "similarity", SIMILARITIES)
        check_choice(missing, "missing", MISSING_POLICIES)
        self.similarity = similarity
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.missing = missing
        self.add_state("ranks", default=[], dist_reduce_fx="cat")
        # A buffer, not a state: it follows .to(device) but is never reduced or reset.
        self.register_buffer("gallery", None, persistent=False)
        self.gallery_labels: Tensor | Sequence[Hashable] | None = None
        self._prepared: PreparedGallery | None = None
        if gallery is not None:
            self.set_gallery(gallery, labels=gallery_labels)
        elif gallery_labels is not None:
            raise ValueError("gallery_labels: given without a gallery; pass both to set_gallery()")

    def set_gallery(self, gallery: Tensor, labels: Tensor | Sequence[Hashable] | None = None) -> None:
        """Set (or replace) the gallery every later :meth:`update` ranks against.

        Args:
            gallery: ``(G, D)`` floating point, finite, ``G >= 1``.
            labels: ``(G,)`` gallery labels, for label targets in :meth:`update`.

        Raises:
            ValueError: wrong shape or dtype, an empty gallery, non-finite values, or labels
                of the wrong length.
        """
        check_ndim(gallery, "gallery", 2, "(G, D)")
        check_floating(gallery, "gallery")
        if gallery.shape[0] == 0:
            raise ValueError(f"gallery: expected at least one item (G >= 1), got shape {fmt_shape(gallery)}")
        check_finite(gallery, "gallery")
        if labels is not None and len(labels) != gallery.shape[0]:
            raise ValueError(
                f"labels: expected one label per gallery item ({gallery.shape[0]}), got {len(labels)}"
            )
        self.gallery = gallery.detach()
        self.gallery_labels = labels

    def update(
        self,
        queries: Tensor,
        targets: Tensor | Sequence[int] | Sequence[Sequence[int]] | None = None,
        exclude: Tensor | Sequence[int] | None = None,
        labels: Tensor | Sequence[Hashable] | None = None,
    ) -> None:
        """Rank a batch of queries and store their best-target ranks.

        Args:
            queries: query embeddings ``(B, D)``.
            targets: correct gallery indices: ``(B,)``, ``(B, P)`` with ``-1`` padding, or
                ``B`` index lists (indices into the gallery, not the batch).
            exclude: gallery index removed from each query's ranking, ``(B,)`` (``-1``: none).
            labels: ``(B,)`` query labels instead of ``targets`` (needs gallery labels).

        Raises:
            ValueError: no gallery set, bad shapes or indices, or (with ``missing="error"``)
                a query without a correct target.
        """
        if self.gallery is None:
            raise ValueError("gallery: not set; pass it to RecallAtK(...) or call set_gallery() first")
        check_ndim(queries, "queries", 2, "(B, D)")
        check_floating(queries, "queries")
        check_size(queries, "queries", 1, self.gallery.shape[1], "embedding dim D (as in the gallery)")
        if queries.dtype != self.gallery.dtype:
            raise ValueError(
                f"queries: expected dtype {self.gallery.dtype} (as the gallery), got {queries.dtype} "
                f"with shape {fmt_shape(queries)}"
            )
        if queries.shape[0] == 0:
            return
        check_finite(queries, "queries")
        if targets is None and labels is None:
            raise ValueError("targets: no correct targets given; pass targets= or labels=")
        if labels is not None and self.gallery_labels is None:
            raise ValueError("labels: the gallery has no labels; pass them to set_gallery(gallery, labels)")
        num_queries, gallery_size = queries.shape[0], self.gallery.shape[0]
        target_source = resolve_targets(
            targets, labels, self.gallery_labels if labels is not None else None,
            num_queries, gallery_size, queries.device,
        )
        if exclude is not None:
            exclude = as_exclude(exclude, num_queries, gallery_size, queries.device)
        if self.missing == "error":
            check_all_found(target_source, exclude, num_queries, self.chunk_size)
        ranks, _ = rank_queries(
            queries.detach(), self._prepared_gallery(queries.device), target_source, exclude, topk=None, chunk_size=self.chunk_size
        )
        self.ranks.append(ranks)

    def _prepared_gallery(self, device: torch.device) -> PreparedGallery:
        gallery = self.gallery.to(device)
        # Identity check: a new tensor (set_gallery, .to(device)) invalidates the cached norms.
        if self._prepared is None or self._prepared.matrix is not gallery:
            self._prepared = prepare_gallery(gallery, self.similarity)
        return self._prepared

    def compute(self) -> dict[str, Tensor]:
        """Recall@K over every query seen (on every process under DDP).

        Returns:
            ``{"recall@K": R@K}`` for each ``K`` (ascending), 0-d float tensors.

        Raises:
            ValueError: no query was ever passed to :meth:`update`.
        """
        # After a distributed sync the state is one gathered tensor, before it a list.
        has_ranks = isinstance(self.ranks, Tensor) or len(self.ranks) > 0
        ranks = dim_zero_cat(self.ranks) if has_ranks else torch.empty(0, dtype=torch.long)
        if ranks.numel() == 0:
            raise ValueError("queries: RecallAtK.compute() called before any query was updated")
        recall = recall_from_ranks(ranks, self.ks)
        return {f"recall@{k}": torch.tensor(value, device=ranks.device) for k, value in recall.items()}
