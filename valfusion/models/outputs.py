"""What :class:`~valfusion.models.VAL` returns when a plain tensor is not enough: small
dataclasses with named parts."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from valfusion.layers import CompositeAttention

__all__ = ["CompositionOutput", "SearchResult"]


@dataclass
class CompositionOutput:
    """What :meth:`VAL.compose` and :meth:`VAL.encode_image` return when levels or
    attention are asked for.

    Attributes:
        embedding: ``(B, E)`` retrieval embedding, unit norm, ``E = sum_l C_l``.
        levels: ``L`` unit-norm level embeddings, level ``l`` of shape ``(B, C_l)``.
        attention: When asked for, one entry per level: a
            :class:`~valfusion.layers.CompositeAttention` with batch size ``B`` for the
            ``"val"`` composers, ``None`` for composers without attention maps.
    """

    embedding: Tensor
    levels: list[Tensor]
    attention: list[CompositeAttention | None] | None = None


@dataclass
class SearchResult:
    """Top-k gallery items of one query (:meth:`VAL.search`).

    Attributes:
        indices: ``(k,)`` long gallery indices, best first (ties: lower index first).
        scores: ``(k,)`` cosine similarities of those items to the query, descending.
        attention: When asked for, the query's per-level attention (batch size 1, see
            :class:`CompositionOutput`), else ``None``.
    """

    indices: Tensor
    scores: Tensor
    attention: list[CompositeAttention | None] | None = None
