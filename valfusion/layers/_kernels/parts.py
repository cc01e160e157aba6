"""What the kernels read from the layers they run for, as protocols.

A kernel takes the layer whose ``forward`` dispatched to it and reads its parameters and
options. It names the layer by these protocols rather than by the layer's class, so that
the kernels never import the public modules, which import them (imports go one way:
``tests/test_metrics_layers.py``). Each protocol lists exactly the attributes its kernel
reads; the public class satisfies it (``mypy`` checks every call).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from valfusion.layers.conv_norm_act import ConvNormAct

__all__ = ["CompositeParts", "FusionParts", "PreservationParts", "SelfAttentionParts"]


class FusionParts(Protocol):
    """:class:`~valfusion.layers.TextImageFusion`: ``F_c`` = ``fuse`` then ``mlp``."""

    @property
    def image_channels(self) -> int: ...
    @property
    def text_channels(self) -> int: ...
    @property
    def fuse(self) -> ConvNormAct: ...
    @property
    def mlp(self) -> nn.Module: ...


class SelfAttentionParts(Protocol):
    """:class:`~valfusion.layers.SelfAttentionalTransformation`'s grouped q/k/v, attention
    options and output projection ``F_proj``."""

    @property
    def num_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def fused_attn(self) -> bool: ...
    @property
    def training(self) -> bool: ...
    @property
    def qkv_weight(self) -> Tensor: ...
    @property
    def qkv_bias(self) -> Tensor | None: ...
    @property
    def attn_drop(self) -> nn.Dropout: ...
    @property
    def proj(self) -> ConvNormAct: ...


class PreservationParts(Protocol):
    """:class:`~valfusion.layers.JointAttentionalPreservation`'s gate convs and squashing."""

    @property
    def channel_conv(self) -> ConvNormAct: ...
    @property
    def spatial_conv(self) -> ConvNormAct: ...
    @property
    def gate(self) -> nn.Module: ...


class CompositeParts(Protocol):
    """:class:`~valfusion.layers.CompositeTransformer`: its three parts and mixing weights."""

    @property
    def fusion(self) -> FusionParts: ...
    @property
    def self_attention(self) -> SelfAttentionParts: ...
    @property
    def preservation(self) -> PreservationParts: ...
    @property
    def w_sa(self) -> Tensor: ...
    @property
    def w_ja(self) -> Tensor: ...
