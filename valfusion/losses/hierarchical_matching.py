"""Hierarchical matching: the VAL training objective over feature levels and side information."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from valfusion._validation import check_same_batch, fmt_shape
from valfusion.losses._pairs import check_pair
from valfusion.losses.batch_classification import BatchClassificationLoss
from valfusion.losses.triplet import BidirectionalTripletLoss

__all__ = ["HierarchicalMatchingLoss", "HierarchicalMatchingOutput"]

FORMS = ("softmax", "triplet")


@dataclass
class HierarchicalMatchingOutput:
    """The terms of :class:`HierarchicalMatchingLoss`, for the optimiser and for logging.

    Attributes:
        total: ``sum_l w_l * levels[l] + lambda * semantic``, shape ``()``; call
            ``backward`` on this.
        levels: the unweighted visual-visual term of every level, each shape ``()``.
        semantic: the unweighted visual-semantic term, shape ``()``, or ``None`` when no
            side information was given.
    """

    total: Tensor
    levels: tuple[Tensor, ...]
    semantic: Tensor | None


def _check_weight(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")
    return float(value)


def _check_levels(levels: object, name: str) -> tuple[Tensor, ...]:
    # A single (B, D) tensor is itself a sequence of rows; say so rather than fail later.
    if isinstance(levels, Tensor):
        raise ValueError(
            f"{name}: expected a sequence of (B, D_l) tensors, one per level, "
            f"got a single tensor of shape {fmt_shape(levels)}"
        )
    if not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError(
            f"{name}: expected a non-empty sequence of (B, D_l) tensors, one per level, "
            f"got {levels!r}"
        )
    return tuple(levels)


class HierarchicalMatchingLoss(nn.Module):
    """VAL's hierarchical matching: a visual-visual term per level plus a visual-semantic term.

    With a pairwise loss ``P`` (either form), composed embeddings ``f_o^l``, target-image
    embeddings ``f_t^l``, and optionally composed embeddings projected to the semantic
    space ``g_o`` and side-information embeddings ``g_s``:

    .. math::

        \\mathcal{L} = \\sum_{l} w_l \\, P(f_o^l, f_t^l) + \\lambda \\, P(g_o, g_s)

    Every term L2-normalises its inputs. One pairwise module (hence one temperature, when
    learned) serves all terms.

    Args:
        form: ``"softmax"`` (:func:`~valfusion.losses.batch_classification_loss`, the
            paper) or ``"triplet"`` (:func:`~valfusion.losses.bidirectional_triplet_loss`,
            the authors' release).
        level_weights: ``w_l``, one non-negative weight per level; ``None`` weights every
            level 1 and accepts any number of levels.
        semantic_weight: ``lambda >= 0``, the weight of the visual-semantic term.
        temperature: softmax temperature (``form="softmax"`` only).
        margin: triplet margin (``form="triplet"`` only).
        semi_hard: semi-hard (``True``) or hardest negatives (``form="triplet"`` only).
        learnable_temperature: learn the temperature, clamped to ``[0.01, 1]``
            (``form="softmax"`` only; see :class:`BatchClassificationLoss`).
        gather: draw negatives from the global batch under ``torch.distributed``.

    Raises:
        ValueError: for an unknown ``form``, negative weights, or
            ``learnable_temperature=True`` with ``form="triplet"``.

    Shape:
        - composed: ``L`` tensors ``(B, D_l)``
        - targets: ``L`` tensors ``(B, D_l)``, matching ``composed`` level by level
        - composed_semantic, side_info: ``(B, E)`` each, or both ``None``
        - output: :class:`HierarchicalMatchingOutput` of scalars ``()``
    """

    def __init__(
        self,
        form: Literal["softmax", "triplet"] = "softmax",
        level_weights: Sequence[float] | None = None,
        semantic_weight: float = 1.0,
        temperature: float = 0.1,
        margin: float = 0.2,
        semi_hard: bool = True,
        learnable_temperature: bool = False,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
        if level_weights is not None:
            if isinstance(level_weights, Tensor) or len(level_weights) == 0:
                raise ValueError(
                    f"level_weights: expected a non-empty sequence of floats or None, "
                    f"got {level_weights!r}"
                )
            level_weights = tuple(
                _check_weight(w, f"level_weights[{i}]") for i, w in enumerate(level_weights)
            )
        self.form = form
        self.level_weights: tuple[float, ...] | None = level_weights
        self.semantic_weight = _check_weight(semantic_weight, "semantic_weight")
        self.pairwise: nn.Module
        if form == "softmax":
            self.pairwise = BatchClassificationLoss(
                temperature, learnable_temperature=learnable_temperature, gather=gather
            )
        else:
            if learnable_temperature:
                raise ValueError(
                    "learnable_temperature: only the softmax form has a temperature; "
                    "got learnable_temperature=True with form='triplet'"
                )
            self.pairwise = BidirectionalTripletLoss(margin, semi_hard=semi_hard, gather=gather)

    def forward(
        self,
        composed: Sequence[Tensor],
        targets: Sequence[Tensor],
        composed_semantic: Tensor | None = None,
        side_info: Tensor | None = None,
    ) -> HierarchicalMatchingOutput:
        """Weighted sum of the per-level terms and the semantic term.

        Args:
            composed: composed-query embeddings, one ``(B, D_l)`` tensor per level.
            targets: target-image embeddings, one ``(B, D_l)`` tensor per level.
            composed_semantic: composed embeddings projected to the semantic space, ``(B, E)``.
            side_info: embeddings of the targets' side information, ``(B, E)``.

        Returns:
            :class:`HierarchicalMatchingOutput` with ``total``, the unweighted ``levels``
            and the unweighted ``semantic`` term (``None`` without side information).

        Raises:
            ValueError: if the level counts differ (from each other or from
                ``level_weights``), a tensor is not ``(B, D)``, batch sizes or embedding
                sizes disagree, or only one of ``composed_semantic``/``side_info`` is given.
        """
        composed = _check_levels(composed, "composed")
        targets = _check_levels(targets, "targets")
        if len(targets) != len(composed):
            raise ValueError(
                f"targets: expected one tensor per level of composed ({len(composed)} levels), "
                f"got {len(targets)}: shapes {[fmt_shape(t) for t in targets]}"
            )
        weights = self.level_weights or (1.0,) * len(composed)
        if len(weights) != len(composed):
            raise ValueError(
                f"composed: level_weights has {len(weights)} entries but composed has "
                f"{len(composed)} levels: shapes {[fmt_shape(c) for c in composed]}"
            )
        for level, (c, t) in enumerate(zip(composed, targets)):
            check_pair(c, f"composed[{level}]", t, f"targets[{level}]")
            check_same_batch(composed[0], "composed[0]", c, f"composed[{level}]")
        if (composed_semantic is None) != (side_info is None):
            given, missing = (
                ("composed_semantic", "side_info")
                if side_info is None
                else ("side_info", "composed_semantic")
            )
            raise ValueError(f"{missing}: required when {given} is given, got None")
        if composed_semantic is not None:
            check_pair(composed_semantic, "composed_semantic", side_info, "side_info")
            check_same_batch(composed[0], "composed[0]", composed_semantic, "composed_semantic")

        levels = tuple(self.pairwise(c, t) for c, t in zip(composed, targets))
        total = sum(w * term for w, term in zip(weights, levels))
        semantic = None
        if composed_semantic is not None:
            semantic = self.pairwise(composed_semantic, side_info)
            total = total + self.semantic_weight * semantic
        return HierarchicalMatchingOutput(total=total, levels=levels, semantic=semantic)

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, level_weights={self.level_weights}, "
            f"semantic_weight={self.semantic_weight}"
        )
