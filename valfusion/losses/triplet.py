"""Bidirectional triplet loss with semi-hard (or hardest) in-batch negatives.

The pairwise loss of the authors' VAL release. The release compares each negative with
the positive distance of the *column's* pair (a broadcasting quirk); this implements the
rule the method describes: each anchor's negatives are compared with *its own* positive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from valfusion._validation import check_non_negative_number
from valfusion.losses._pairs import check_has_negatives, check_pair, compute_dtype, normalize
from valfusion.losses.distributed import gather_candidates

__all__ = ["BidirectionalTripletLoss", "bidirectional_triplet_loss"]


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``||x_i - y_j||^2`` for ``x`` ``(B, D)``, ``y`` ``(N, D)`` -> ``(B, N)``."""
    # The expansion avoids a (B, N, D) intermediate; the clamp removes the tiny negative
    # values cancellation leaves for (near-)identical rows, and, unlike cdist's square
    # root, it has a finite gradient at zero distance.
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2.0 * (x @ y.T)
    return sq.clamp_min(0.0)


def _hinge_per_anchor(dist: Tensor, offset: int, margin: float, semi_hard: bool) -> Tensor:
    """Hinge term of every anchor from its distances ``(B, N)`` to the candidates -> ``(B,)``.

    Anchor ``i``'s positive is candidate ``offset + i``.
    """
    rows = torch.arange(dist.shape[0], device=dist.device)
    positive = offset + rows
    d_pos = dist[rows, positive]  # (B,)
    columns = torch.arange(dist.shape[1], device=dist.device)
    eligible = columns[None, :] != positive[:, None]  # (B, N): every candidate but the positive
    if semi_hard:
        eligible &= dist >= d_pos[:, None]
    has_negative = eligible.any(dim=1)
    # amin splits the gradient evenly between tied negatives (deterministic, unlike min's
    # arbitrary index); rows with no eligible negative are replaced before the arithmetic
    # so no infinity reaches the hinge or its gradient.
    d_neg = dist.masked_fill(~eligible, math.inf).amin(dim=1)
    d_neg = torch.where(has_negative, d_neg, d_pos)
    hinge = (margin + d_pos - d_neg).clamp_min(0.0)
    return torch.where(has_negative, hinge, torch.zeros_like(hinge))


def bidirectional_triplet_loss(
    a: Tensor,
    b: Tensor,
    margin: float = 0.2,
    semi_hard: bool = True,
    *,
    gather: bool = True,
) -> Tensor:
    """Triplet hinge in both directions (``a -> b`` and ``b -> a``) with in-batch negatives.

    Rows are L2-normalised and ``d_ij = ||a_i - b_j||^2``. For anchor ``a_i`` the positive is
    ``b_i`` and the negative ``b_k`` is the closest ``k != i`` with ``d_ik >= d_ii``
    (semi-hard: *not closer* than the positive, ties included) or the closest ``k != i``
    at all (``semi_hard=False``, hardest); symmetrically for anchor ``b_i`` against the ``a``:

    .. math::

        \\mathcal{L} = \\frac{1}{N} \\sum_{i=1}^{N} [m + d_{ii} - d_{ik(i)}]_+
                     + \\frac{1}{N} \\sum_{i=1}^{N} [m + d_{ii} - d_{k'(i)i}]_+

    An anchor with no semi-hard negative (every negative is closer than its positive)
    contributes zero but still counts in ``N``, as the masking in the authors' release does.
    Ties count as semi-hard, so a batch collapsed to one point (all distances exactly
    equal, e.g. zero embeddings) reports ``2 m`` rather than zero. fp16/bf16 inputs are computed in fp32; the value and its
    gradient are finite for any finite input, including identical or zero embeddings.

    Args:
        a: one side of the pairs (e.g. composed queries), shape ``(B, D)``.
        b: the other side (e.g. targets), shape ``(B, D)``; ``b[i]`` is ``a[i]``'s positive.
        margin: ``m >= 0``.
        semi_hard: semi-hard negatives (``True``) or the hardest negative (``False``).
        gather: when ``torch.distributed`` is initialised with more than one process, the
            local anchors are matched against the global batch and the value returned is
            this rank's share, ``(W / N) sum_{local i} l_i``: its mean over ranks is the
            global loss and DDP-averaged gradients equal those of one process on the
            concatenated batch (see :mod:`valfusion.losses.distributed`). Every rank must
            call the loss. ``False`` uses only the local batch.

    Returns:
        Scalar loss, shape ``()``, in fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: if ``a``/``b`` are not floating ``(B, D)`` tensors of equal shape, if
            the (global) batch holds a single pair (no negatives), or if ``margin < 0``.
    """
    a, b = check_pair(a, "a", b, "b")
    check_non_negative_number(margin, "margin")
    dtype = compute_dtype(a, b)
    a, b = normalize(a, dtype), normalize(b, dtype)
    candidates = gather_candidates(a, b, gather=gather)
    check_has_negatives(candidates.count, a, "a")
    all_a, all_b = candidates.rows
    d_ab = _squared_distances(a, all_b)  # (B, N)
    # Without gathering the b -> a distances are the transpose; with it, b's local rows
    # against all of a are a different block of the global matrix.
    d_ba = d_ab.T if candidates.world == 1 else _squared_distances(b, all_a)
    a_to_b = _hinge_per_anchor(d_ab, candidates.offset, margin, semi_hard)
    b_to_a = _hinge_per_anchor(d_ba, candidates.offset, margin, semi_hard)
    return (a_to_b.sum() + b_to_a.sum()) * candidates.scale


class BidirectionalTripletLoss(nn.Module):
    """Module form of :func:`bidirectional_triplet_loss` (no parameters).

    Args:
        margin: hinge margin ``m >= 0``.
        semi_hard: semi-hard negatives (``True``) or the hardest negative (``False``).
        gather: match local anchors against the global batch under ``torch.distributed``.

    Raises:
        ValueError: if ``margin < 0``.

    Shape:
        - a: ``(B, D)``
        - b: ``(B, D)``
        - output: ``()``
    """

    def __init__(self, margin: float = 0.2, semi_hard: bool = True, gather: bool = True) -> None:
        super().__init__()
        self.margin = check_non_negative_number(margin, "margin")
        self.semi_hard = semi_hard
        self.gather = gather

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """:func:`bidirectional_triplet_loss` of the pairs ``(a[i], b[i])``.

        Args:
            a: one side of the pairs, shape ``(B, D)``.
            b: the other side, shape ``(B, D)``.

        Returns:
            Scalar loss, shape ``()``.
        """
        return bidirectional_triplet_loss(
            a, b, self.margin, self.semi_hard, gather=self.gather
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, semi_hard={self.semi_hard}, gather={self.gather}"
