"""Input checks of the metrics package, written once for :func:`recall_at_k` and :class:`RecallAtK`.

The bottom layer of :mod:`valfusion.metrics` (checks -> functional -> ``Metric``, as
torchmetrics' ``utilities/checks.py`` -> ``functional/`` -> ``Metric`` classes): it imports
no other module of the package. Every check raises :class:`ValueError` naming the
argument, what was expected and what was received.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from valfusion._validation import check_floating, check_ndim, check_positive_int, fmt_shape

__all__ = [
    "MISSING_POLICIES",
    "SIMILARITIES",
    "Missing",
    "Similarity",
    "check_choice",
    "check_embeddings",
    "check_finite",
    "check_gallery",
    "check_ks",
    "check_recall_options",
    "check_same_kind",
]

Similarity = Literal["cosine", "dot", "euclidean"]
Missing = Literal["error", "miss"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
MISSING_POLICIES: tuple[str, ...] = get_args(Missing)

# Rows checked for non-finite values at a time (bounds the bool temporary).
_FINITE_CHECK_ROWS = 1 << 16


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate cut-offs: a non-empty sequence of ints ``>= 1``; returns them sorted, unique."""
    if isinstance(ks, int) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Sequence) or len(ks) == 0:
        raise ValueError(f"ks: expected a non-empty sequence of integers >= 1, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"ks: expected integers K >= 1, got {k!r} in {tuple(ks)!r}")
    return tuple(sorted(set(ks)))


def check_choice(value: object, name: str, choices: Sequence[str]) -> None:
    """Require ``value`` to be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_recall_options(
    ks: Sequence[int], similarity: object, chunk_size: object, missing: object
) -> tuple[int, ...]:
    """The options every Recall@K entry point takes; returns ``ks`` sorted and unique."""
    ks = check_ks(ks)
    check_choice(similarity, "similarity", SIMILARITIES)
    check_positive_int(chunk_size, "chunk_size")
    check_choice(missing, "missing", MISSING_POLICIES)
    return ks


def check_finite(x: Tensor, name: str) -> None:
    """Require finite values (a NaN score would silently rank its target first).

    One sum over ``x`` (non-finite iff some entry is NaN or inf, or the entries are so large
    that they overflow); the offending row is searched only when the check fails.
    """
    if bool(torch.isfinite(x.sum())):
        return
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        bad = (~torch.isfinite(x[start : start + _FINITE_CHECK_ROWS])).any(dim=1).nonzero()
        if bad.numel():
            raise ValueError(
                f"{name}: expected finite values, got NaN or inf in row {start + int(bad[0])} "
                f"of shape {fmt_shape(x)}"
            )
    raise ValueError(f"{name}: expected finite values, got entries whose sum overflows (shape {fmt_shape(x)})")


def check_embeddings(x: object, name: str, layout: str) -> Tensor:
    """Require a 2-D floating-point tensor of finite values; ``layout`` is e.g. ``"(Q, D)"``."""
    x = check_ndim(x, name, 2, layout)
    check_floating(x, name)
    check_finite(x, name)
    return x


def check_gallery(gallery: object) -> Tensor:
    """Require gallery embeddings ``(G, D)``: floating point, finite, ``G >= 1``."""
    gallery = check_embeddings(gallery, "gallery", "(G, D)")
    if gallery.shape[0] == 0:
        raise ValueError(f"gallery: expected at least one item (G >= 1), got shape {fmt_shape(gallery)}")
    return gallery


def check_same_kind(reference: Tensor, reference_name: str, x: Tensor, name: str) -> None:
    """Require ``x`` to have the dtype and device of ``reference`` (one GEMM multiplies them)."""
    if x.dtype != reference.dtype or x.device != reference.device:
        raise ValueError(
            f"{name}: expected dtype {reference.dtype} on {reference.device} (as {reference_name}), "
            f"got dtype {x.dtype} on {x.device} with shape {fmt_shape(x)}"
        )
