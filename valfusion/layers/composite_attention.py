"""The attention maps a composition layer can return for inspection."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["CompositeAttention"]


@dataclass
class CompositeAttention:
    """Attention maps of one composite transformer call (for visualisation and analysis).

    Attributes:
        channel_gate: ``gate(a_ch)`` (``gate`` the preservation's ``gate_layer``,
            sigmoid by default), shape ``(B, C, 1, 1)``.
        spatial_gate: ``gate(a_sp)``, shape ``(B, 1, H, W)``.
        joint_attention: ``channel_gate * spatial_gate``, shape ``(B, C, H, W)``; the
            preserved features are ``joint_attention * reference``.
        self_attention: softmax attention weights of the self-attentional transformation,
            shape ``(B, num_heads, N, N)`` with ``N = H * W`` (row = query position, before
            attention dropout), or ``None`` when the producer has no self-attention.
    """

    channel_gate: Tensor
    spatial_gate: Tensor
    joint_attention: Tensor
    self_attention: Tensor | None = None
