"""``RecallAtK``: Recall@K as a ``torchmetrics.Metric``, batch by batch, distributed-ready.

Each ``update`` ranks its batch of queries against the (fixed) gallery right away and
stores only the ``(B,)`` best-target ranks. The rank list is a ``"cat"`` state, so under
DDP ``compute`` gathers the ranks of every process and all of them report the recall of
the whole query set; no user code is needed beyond giving each process the same gallery.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors
from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE

from valfusion._validation import check_size, fmt_shape
from valfusion.metrics._checks import (
    Missing,
    Similarity,
    check_embeddings,
    check_gallery,
    check_recall_options,
)
from valfusion.metrics.ranking import PreparedGallery, prepare_gallery
from valfusion.metrics.recall import rank_queries, recall_from_ranks
from valfusion.metrics.targets import resolve_targets

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
        fig, ax = metric.plot()  # needs matplotlib (the ``demo`` extra)

    The ``torchmetrics.Metric`` contract, as torchmetrics' own retrieval metrics keep it:
    ``forward`` returns the recall of its batch and adds the batch to the state;
    ``compute`` before any ``update`` warns (torchmetrics' ``UserWarning``) and, like a
    retrieval metric without data, returns 0 for every ``K``; ``reset``, ``merge_state``,
    ``clone`` and DDP synchronisation (including processes that saw no query) work on
    the stored ranks. The gallery is a non-persistent buffer (it follows ``.to(device)``
    but is neither reset, reduced nor saved); the ranks join the ``state_dict`` after
    ``metric.persistent(True)``.

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
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    ranks: list[Tensor] | Tensor
    gallery: Tensor | None

    def __init__(
        self,
        gallery: Tensor | None = None,
        *,
        gallery_labels: Tensor | Sequence[Hashable] | None = None,
        ks: Sequence[int] = (1, 10, 50),
        similarity: Similarity = "cosine",
        chunk_size: int = 1024,
        missing: Missing = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ks = check_recall_options(ks, similarity, chunk_size, missing)
        self.similarity = similarity
        self.chunk_size = chunk_size
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
        gallery = check_gallery(gallery)
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
        queries = check_embeddings(queries, "queries", "(B, D)")
        check_size(queries, "queries", 1, self.gallery.shape[1], "embedding dim D (as in the gallery)")
        if queries.dtype != self.gallery.dtype:
            raise ValueError(
                f"queries: expected dtype {self.gallery.dtype} (as the gallery), got {queries.dtype} "
                f"with shape {fmt_shape(queries)}"
            )
        if queries.shape[0] == 0:
            return
        if targets is None and labels is None:
            raise ValueError("targets: no correct targets given; pass targets= or labels=")
        if labels is not None and self.gallery_labels is None:
            raise ValueError("labels: the gallery has no labels; pass them to set_gallery(gallery, labels)")
        target_source, exclude = resolve_targets(
            targets, labels, self.gallery_labels if labels is not None else None, exclude,
            num_queries=queries.shape[0], gallery_size=self.gallery.shape[0], device=queries.device,
            missing=self.missing, chunk_size=self.chunk_size,
        )
        ranks, _ = rank_queries(
            queries.detach(), self._prepared_gallery(queries.device), target_source, exclude,
            topk=None, chunk_size=self.chunk_size,
        )
        assert isinstance(self.ranks, list)  # a list of batches until compute() gathers them
        self.ranks.append(ranks)

    def compute(self) -> dict[str, Tensor]:
        """Recall@K over every query seen (on every process under DDP).

        Returns:
            ``{"recall@K": R@K}`` for each ``K`` (ascending), 0-d float tensors; 0 for every
            ``K`` when no query was seen (what torchmetrics' retrieval metrics return without
            data; torchmetrics also warns when ``update`` was never called).
        """
        ranks = self._all_ranks()
        if ranks.numel() == 0:
            return {f"recall@{k}": torch.tensor(0.0, device=ranks.device) for k in self.ks}
        recall = recall_from_ranks(ranks, self.ks)
        return {f"recall@{k}": torch.tensor(value, device=ranks.device) for k, value in recall.items()}

    def plot(
        self,
        val: dict[str, Tensor] | Sequence[dict[str, Tensor]] | None = None,
        ax: _AX_TYPE | None = None,
    ) -> _PLOT_OUT_TYPE:
        """Plot Recall@K: one point per ``K``, or one line per ``K`` over a sequence of results.

        Drawn by torchmetrics' plotting helper, with the bounds ``[0, 1]`` and the optimal
        value 1 marked.

        Args:
            val: a result of :meth:`compute` or ``forward``, or a sequence of them (a curve
                over steps); None plots :meth:`compute`.
            ax: a matplotlib axis to draw on; None makes a new figure.

        Returns:
            ``(fig, ax)``: the matplotlib figure (None when ``ax`` was given) and axis.

        Raises:
            ModuleNotFoundError: matplotlib is not installed (``pip install matplotlib``, or
                the ``demo`` extra).
        """
        return self._plot(val, ax)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add the ranks of another metric, or of its ``metric_state``, to this one's.

        Ranks are comparable only against one gallery under one similarity, so a
        :class:`RecallAtK` with another gallery or similarity is refused.

        Args:
            incoming_state: a :class:`RecallAtK`, or a state dict ``{"ranks": [...]}``.

        Raises:
            ValueError: a :class:`RecallAtK` that ranked against another gallery or with
                another similarity (and torchmetrics' errors for other states).
        """
        if isinstance(incoming_state, RecallAtK):
            self._check_same_ranking(incoming_state)
        super().merge_state(incoming_state)

    def _check_same_ranking(self, other: RecallAtK) -> None:
        if other.similarity != self.similarity:
            raise ValueError(
                f"incoming_state: expected a RecallAtK with similarity {self.similarity!r}, "
                f"got {other.similarity!r}"
            )
        if self.gallery is None or other.gallery is None:
            return
        same = other.gallery.shape == self.gallery.shape and torch.equal(
            other.gallery.to(self.gallery.device), self.gallery
        )
        if not same:
            raise ValueError(
                f"incoming_state: expected a RecallAtK ranked against this gallery (shape "
                f"{fmt_shape(self.gallery)}), got one with another gallery (shape {fmt_shape(other.gallery)})"
            )

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # torchmetrics stands in for an empty list state with an empty tensor of the
        # metric's float dtype, while the other processes send long ranks; the collective
        # needs one dtype everywhere (gloo aborts on the size mismatch). The state is
        # restored from torchmetrics' cache after compute.
        self.ranks = [self._all_ranks()]
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _all_ranks(self) -> Tensor:
        # A list of (B,) batches while accumulating, one gathered tensor after a sync.
        if isinstance(self.ranks, Tensor):
            return self.ranks.long()
        if not self.ranks:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return dim_zero_cat(self.ranks).long()

    def _prepared_gallery(self, device: torch.device) -> PreparedGallery:
        assert self.gallery is not None  # update() refuses to run without one
        gallery = self.gallery.to(device)
        # Identity check: a new tensor (set_gallery, .to(device)) invalidates the cached norms.
        if self._prepared is None or self._prepared.matrix is not gallery:
            self._prepared = prepare_gallery(gallery, self.similarity)
        return self._prepared
