"""Correct answers of retrieval queries, normalised to one form: padded gallery indices.

Users give the correct targets of each query as gallery indices (one per query, a list
per query, or a ``-1``-padded matrix) or as labels (an item is correct when its label
equals the query's). Both become ``(Q, P)`` long tensors with ``-1`` padding; for labels
the rows are built one chunk at a time so memory stays bounded by the chunk.
:func:`resolve_targets` is the one entry point both :func:`~valfusion.metrics.recall_at_k`
and :class:`~valfusion.metrics.RecallAtK` validate their targets and exclusions through.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from numbers import Integral

import torch
from torch import Tensor

from valfusion._validation import check_int_tensor, fmt_shape

__all__ = [
    "LabelTargets",
    "as_exclude",
    "as_padded_targets",
    "check_all_found",
    "chunk_targets",
    "resolve_targets",
]


def resolve_targets(
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]] | None,
    query_labels: Tensor | Sequence[Hashable] | None,
    gallery_labels: Tensor | Sequence[Hashable] | None,
    exclude: Tensor | Sequence[int] | None,
    *,
    num_queries: int,
    gallery_size: int,
    device: torch.device,
    missing: str,
    chunk_size: int,
) -> tuple[Tensor | LabelTargets, Tensor | None]:
    """Validate the target source and the exclusions, and apply the missing-target policy.

    Args:
        targets: gallery indices (see :func:`as_padded_targets`), or None.
        query_labels: ``(Q,)`` labels, with ``gallery_labels``, or None.
        gallery_labels: ``(G,)`` labels, with ``query_labels``, or None.
        exclude: gallery index removed from each query's ranking (see :func:`as_exclude`), or None.
        num_queries: ``Q``.
        gallery_size: ``G``.
        device: where the results live.
        missing: ``"error"`` raises for a query with no correct target left (see
            :func:`check_all_found`); ``"miss"`` accepts it.
        chunk_size: queries per label chunk when checking.

    Returns:
        ``(targets, exclude)``: padded correct indices ``(Q, P)`` or a :class:`LabelTargets`;
        ``(Q,)`` long or None.

    Raises:
        ValueError: both or neither target source, labels on one side only, bad indices or
            labels, or (``missing="error"``) a query without a correct target.
    """
    has_labels = query_labels is not None or gallery_labels is not None
    if targets is not None and has_labels:
        raise ValueError("targets: give either targets or query_labels/gallery_labels, not both")
    if targets is not None:
        source: Tensor | LabelTargets = as_padded_targets(targets, num_queries, gallery_size, device)
    elif not has_labels:
        raise ValueError(
            "targets: no correct targets given; pass targets=, query_labels= and gallery_labels=, "
            "or setup="
        )
    elif query_labels is None or gallery_labels is None:
        missing_name = "query_labels" if query_labels is None else "gallery_labels"
        raise ValueError(f"{missing_name}: labels must be given for both queries and gallery")
    else:
        source = LabelTargets(query_labels, gallery_labels, num_queries, gallery_size, device)
    if exclude is not None:
        exclude = as_exclude(exclude, num_queries, gallery_size, device)
    if missing == "error":
        check_all_found(source, exclude, num_queries, chunk_size)
    return source, exclude


def check_all_found(
    targets: Tensor | LabelTargets, exclude: Tensor | None, num_queries: int, chunk_size: int
) -> None:
    """Raise if some query has no correct target once its excluded item is removed.

    Args:
        targets: padded correct indices ``(Q, P)`` or a :class:`LabelTargets`.
        exclude: ``(Q,)`` long (``-1``: none) or None.
        num_queries: ``Q``.
        chunk_size: queries checked at a time.

    Raises:
        ValueError: naming how many queries have no correct target, and a few of them.
    """
    missing: list[Tensor] = []
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        rows = chunk_targets(targets, start, stop)
        valid = rows >= 0
        if exclude is not None:
            valid &= rows != exclude[start:stop, None]
        missing.append((~valid.any(dim=1)).nonzero().squeeze(1) + start)
    missing_rows = torch.cat(missing)
    if missing_rows.numel():
        name = "targets" if isinstance(targets, Tensor) else "query_labels"
        shown = missing_rows[:5].tolist()
        raise ValueError(
            f"{name}: {missing_rows.numel()} of {num_queries} queries have no correct target in the "
            f"gallery (after removing excluded items), e.g. queries {shown}; pass missing='miss' "
            "to count them as misses (skipping them would inflate recall)"
        )


def chunk_targets(targets: Tensor | LabelTargets, start: int, stop: int) -> Tensor:
    """Padded correct indices of queries ``start:stop``, ``(C, P)`` long, ``-1`` padded."""
    return targets[start:stop] if isinstance(targets, Tensor) else targets.chunk(start, stop)


def as_padded_targets(
    targets: Tensor | Sequence[int] | Sequence[Sequence[int]],
    num_queries: int,
    gallery_size: int,
    device: torch.device,
    name: str = "targets",
) -> Tensor:
    """Validate gallery-index targets and return them padded.

    Args:
        targets: ``(Q,)`` or ``(Q, P)`` integer tensor (``-1`` = padding / no target), a
            sequence of ``Q`` ints, or a sequence of ``Q`` sequences of ints.
        num_queries: ``Q``.
        gallery_size: ``G``; every index must lie in ``[-1, G)``.
        device: where the result lives.
        name: the argument's name in error messages.

    Returns:
        ``(Q, P)`` long tensor, ``-1`` padded (``P >= 1``).

    Raises:
        ValueError: wrong type, shape, length or an index out of range.
    """
    if isinstance(targets, Tensor):
        check_int_tensor(targets, name)
        if targets.dim() == 1:
            targets = targets[:, None]
        elif targets.dim() != 2:
            raise ValueError(
                f"{name}: expected a (Q,) or (Q, P) integer tensor, got shape {fmt_shape(targets)}"
            )
        padded = targets.to(device=device, dtype=torch.long)
    elif isinstance(targets, Sequence) and not isinstance(targets, (str, bytes)):
        rows: list[Sequence[object]] = []
        for i, target in enumerate(targets):
            row: object = [target] if _is_int(target) else target
            if not isinstance(row, Sequence) or not all(_is_int(t) for t in row):
                raise ValueError(
                    f"{name}: expected an int or a sequence of ints per query, got {row!r} "
                    f"for query {i}"
                )
            rows.append(row)
        width = max((len(row) for row in rows), default=0)
        padded = torch.full((len(rows), max(width, 1)), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        padded = padded.to(device)
    else:
        raise ValueError(
            f"{name}: expected a tensor or a sequence of gallery indices, got {type(targets).__name__}"
        )
    if padded.shape[0] != num_queries:
        raise ValueError(
            f"{name}: expected one entry per query (Q = {num_queries}), got {padded.shape[0]} "
            f"(shape {fmt_shape(padded)})"
        )
    _check_range(padded, name, gallery_size)
    return padded


def as_exclude(
    exclude: Tensor | Sequence[int], num_queries: int, gallery_size: int, device: torch.device
) -> Tensor:
    """Validate the per-query excluded gallery index.

    Args:
        exclude: ``(Q,)`` integer tensor or sequence of ``Q`` ints, ``-1`` = exclude nothing.
        num_queries: ``Q``.
        gallery_size: ``G``; every index must lie in ``[-1, G)``.
        device: where the result lives.

    Returns:
        ``(Q,)`` long tensor.

    Raises:
        ValueError: wrong type, shape or an index out of range.
    """
    if not isinstance(exclude, Tensor):
        if not isinstance(exclude, Sequence) or not all(_is_int(e) for e in exclude):
            raise ValueError(
                f"exclude: expected a (Q,) integer tensor or a sequence of ints, got {exclude!r:.80}"
            )
        exclude = torch.as_tensor(list(exclude), dtype=torch.long).reshape(-1)
    check_int_tensor(exclude, "exclude")
    if exclude.shape != (num_queries,):
        raise ValueError(
            f"exclude: expected shape ({num_queries},) (one gallery index per query), "
            f"got {fmt_shape(exclude)}"
        )
    exclude = exclude.to(device=device, dtype=torch.long)
    _check_range(exclude, "exclude", gallery_size)
    return exclude


class LabelTargets:
    """Targets defined by labels: gallery item ``j`` is correct for query ``i`` iff labels match.

    The gallery labels are sorted once; :meth:`chunk` turns a chunk of query labels into
    padded index rows with ``searchsorted``, so the padded width is the size of the
    largest label group the chunk asks for (at most ``G``).

    Args:
        query_labels: ``(Q,)`` integer tensor or a sequence of ``Q`` hashable labels.
        gallery_labels: ``(G,)`` integer tensor or a sequence of ``G`` hashable labels.
        device: where the rows live.

    Raises:
        ValueError: mismatched lengths or mixed label kinds.
    """

    def __init__(
        self,
        query_labels: Tensor | Sequence[Hashable],
        gallery_labels: Tensor | Sequence[Hashable],
        num_queries: int,
        gallery_size: int,
        device: torch.device,
    ) -> None:
        query, gallery = _encode_labels(query_labels, gallery_labels)
        for name, labels, expected, what in (
            ("query_labels", query, num_queries, "Q"),
            ("gallery_labels", gallery, gallery_size, "G"),
        ):
            if labels.shape != (expected,):
                raise ValueError(
                    f"{name}: expected one label per item, shape ({expected},) ({what} = {expected}), "
                    f"got {fmt_shape(labels)}"
                )
        self.query = query.to(device)
        gallery = gallery.to(device)
        self.sorted_labels, self.order = gallery.sort(stable=True)

    def chunk(self, start: int, stop: int) -> Tensor:
        """Padded correct gallery indices of queries ``start:stop``, ``(C, P)`` long, ``-1`` padded."""
        labels = self.query[start:stop]
        lo = torch.searchsorted(self.sorted_labels, labels)
        hi = torch.searchsorted(self.sorted_labels, labels, right=True)
        counts = hi - lo
        width = max(int(counts.max()), 1) if counts.numel() else 1
        offsets = torch.arange(width, device=labels.device)
        valid = offsets < counts[:, None]
        positions = (lo[:, None] + offsets).clamp_max(self.order.numel() - 1)
        return torch.where(valid, self.order[positions], -1)


def _encode_labels(
    query_labels: Tensor | Sequence[Hashable], gallery_labels: Tensor | Sequence[Hashable]
) -> tuple[Tensor, Tensor]:
    if isinstance(query_labels, Tensor) and isinstance(gallery_labels, Tensor):
        check_int_tensor(query_labels, "query_labels")
        check_int_tensor(gallery_labels, "gallery_labels")
        return query_labels.long(), gallery_labels.long()
    if isinstance(query_labels, Tensor) or isinstance(gallery_labels, Tensor):
        raise ValueError(
            "query_labels, gallery_labels: expected both integer tensors or both sequences of "
            f"hashable labels, got {type(query_labels).__name__} and {type(gallery_labels).__name__}"
        )
    codes: dict[Hashable, int] = {}
    gallery = [codes.setdefault(label, len(codes)) for label in gallery_labels]
    # A query label absent from the gallery gets its own code: no correct target.
    query = [codes.setdefault(label, len(codes)) for label in query_labels]
    return torch.tensor(query, dtype=torch.long), torch.tensor(gallery, dtype=torch.long)


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _check_range(indices: Tensor, name: str, gallery_size: int) -> None:
    if indices.numel() == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < -1 or high >= gallery_size:
        bad = low if low < -1 else high
        raise ValueError(
            f"{name}: expected gallery indices in [0, {gallery_size}) (or -1 for none), "
            f"got {bad} (shape {fmt_shape(indices)})"
        )
