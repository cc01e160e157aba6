"""VAL's composite transformer: fusion, self-attentional transformation, joint preservation."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from valfusion._validation import check_positive_int, fmt_shape
from valfusion.layers import _kernels
from valfusion.layers._inputs import GridSize, check_composer_inputs, grid_input
from valfusion.layers._kernels.composite import composite_transformer
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.conv_norm_act import LayerFactory
from valfusion.layers.joint_attentional_preservation import JointAttentionalPreservation
from valfusion.layers.self_attentional_transformation import (
    HeadLayout,
    SelfAttentionalTransformation,
)
from valfusion.layers.text_image_fusion import TextImageFusion

__all__ = ["CompositeTransformer"]


class CompositeTransformer(nn.Module):
    """Compose reference-image features with a text feature (VAL, Chen et al. CVPR 2020).

    ``X = F_c([F_r ; tile(t)])``, ``F_sa = SelfAttentionalTransformation(X)``,
    ``F_ja = JointAttentionalPreservation(X, F_r)``, ``F_o = w_sa * F_sa + w_ja * F_ja``,
    with learnable scalars starting at ``w_sa = 0`` and ``w_ja = 1`` (the official start:
    the block begins as a gated copy of the reference and learns how much transformation
    to add). The output has the input map's shape, so the block drops in after any CNN
    stage.

    The defaults are the paper configuration: a 7x7 spatial gate that works at any
    resolution, plain gate and projection convs (gates in ``(0, 1)``), no attention
    dropout, and ``F_c`` = 1x1 conv + batch norm + ReLU. Heads are ``"grouped"`` by
    default, as in the release that produced the paper's numbers; that halves the q/k/v
    cost at two heads. ``head_layout="full"`` gives the paper's notation (every head sees
    all channels). :meth:`official` builds the official graph.

    ``forward`` is the plain composition of the three parts, the reference. The fused
    backend (:func:`valfusion.layers.set_backend`; the default ``"auto"`` picks it on CPU
    and CUDA) computes the same function in one pass over token-major ``(B * N, C)``
    memory: ``F_c`` one GEMM onto the broadcast text term, the q/k/v maps one batched GEMM
    that also yields the gates' pooled inputs, attention by SDPA (no ``N x N`` matrix), and
    ``F_proj`` one GEMM accumulating straight into the buffer of ``w_ja F_ja``; the joint
    gate and the mix are never materialised. There the output keeps the input's memory
    format (``channels_last`` in, ``channels_last`` out).
    ``benchmarks/bench_composite.py`` measures it.

    Token input (ViT / CLIP patch tokens): ``image_features`` may be ``(B, N, C)`` with
    ``grid_size=(H, W)``. The ``num_prefix_tokens`` first tokens (timm's name: class token,
    registers) pass through unchanged, and the ``H * W`` patch tokens are composed exactly
    as the map ``(B, C, H, W)`` they form: VAL's operations are defined on the ``H x W``
    grid (the spatial gate's conv, the means over the grid), and the ViT blocks that follow
    mix the class token with the composed patches. The output is ``(B, N, C)``. See the
    how-to "VAL inside a ViT".

    Args:
        image_channels: ``C``; must be divisible by ``num_heads``.
        text_channels: ``D``.
        num_heads: attention heads.
        head_layout: ``"full"`` or ``"grouped"`` (see :class:`SelfAttentionalTransformation`).
        qkv_bias: bias on the q/k/v maps.
        attn_drop: dropout on the attention matrix (training only).
        fused_attn: attention by :func:`torch.nn.functional.scaled_dot_product_attention`
            unless attention maps are requested, else by the explicit formula (in every
            backend; see :class:`SelfAttentionalTransformation`).
        fusion_layers: number of 1x1 conv layers in ``F_c``.
        fusion_hidden_channels: width of ``F_c``'s inner layers (``fusion_layers > 1``).
        spatial_kernel_size: kernel of the spatial gate conv ``F_sp``.
        norm_layer: normalisation after each conv of ``F_c`` (and of ``F_proj`` / the gates
            when ``proj_norm_act`` / ``gate_norm_act``).
        act_layer: activation after ``norm_layer``, same places.
        proj_norm_act: follow ``F_proj`` with ``norm_layer`` and ``act_layer``.
        gate_norm_act: follow ``F_ch`` and ``F_sp`` with ``norm_layer`` and ``act_layer``.
        feature_size: ``(H, W)`` the block is tied to (inputs of another size raise), or
            ``None`` for any size.
        w_sa_init: initial ``w_sa``.
        w_ja_init: initial ``w_ja``.

    Raises:
        ValueError: on a bad size or option.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        num_heads: int = 2,
        *,
        head_layout: HeadLayout = "grouped",
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        fused_attn: bool = True,
        fusion_layers: int = 1,
        fusion_hidden_channels: int | None = None,
        spatial_kernel_size: int | tuple[int, int] = 7,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
        proj_norm_act: bool = False,
        gate_norm_act: bool = False,
        feature_size: int | tuple[int, int] | None = None,
        w_sa_init: float = 0.0,
        w_ja_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        self.feature_size: tuple[int, int] | None = None
        if feature_size is not None:
            sides = _pair(feature_size)
            if len(sides) != 2:
                raise ValueError(f"feature_size: expected an int or (H, W), got {feature_size!r}")
            height, width = (check_positive_int(side, "feature_size") for side in sides)
            self.feature_size = (height, width)
        self.fusion = TextImageFusion(
            image_channels,
            text_channels,
            fusion_hidden_channels,
            fusion_layers,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.self_attention = SelfAttentionalTransformation(
            image_channels,
            num_heads,
            head_layout=head_layout,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_norm_layer=norm_layer if proj_norm_act else None,
            proj_act_layer=act_layer if proj_norm_act else None,
            fused_attn=fused_attn,
        )
        self.preservation = JointAttentionalPreservation(
            image_channels,
            spatial_kernel_size,
            norm_layer=norm_layer if gate_norm_act else None,
            act_layer=act_layer if gate_norm_act else None,
        )
        self.w_sa = nn.Parameter(torch.tensor(float(w_sa_init)))
        self.w_ja = nn.Parameter(torch.tensor(float(w_ja_init)))

    @classmethod
    def official(
        cls, image_channels: int, text_channels: int, feature_size: int | tuple[int, int]
    ) -> CompositeTransformer:
        """The configuration of the authors' TensorFlow release (see ``val.md``).

        Every conv (``F_c``, ``F_proj``, ``F_ch``, ``F_sp``) is conv -> batch norm -> ReLU
        (so both gates lie in ``[0.5, 1)``); ``F_c`` is one 1x1 conv ``C + D -> C``; the
        spatial gate's kernel is the whole ``H x W`` map with TF "same" padding; two
        grouped heads without q/k/v bias; dropout 0.1 on the attention matrix; mixing
        weights start at ``w_sa = 0``, ``w_ja = 1``. Batch norm uses PyTorch's defaults
        (eps 1e-5 as in TF-slim; momentum 0.1, where TF-slim's ResNet scope uses decay
        0.997); evaluation-mode math is identical.

        Args:
            image_channels: ``C`` (even).
            text_channels: ``D``.
            feature_size: ``(H, W)`` (or ``H`` for square maps) of the level's feature map;
                the block then only accepts maps of that size.

        Returns:
            A :class:`CompositeTransformer`.

        Raises:
            ValueError: on an odd ``image_channels`` or a non-positive size.
        """
        size = _pair(feature_size)
        return cls(
            image_channels,
            text_channels,
            num_heads=2,
            head_layout="grouped",
            qkv_bias=False,
            attn_drop=0.1,
            fusion_layers=1,
            spatial_kernel_size=size,
            norm_layer=nn.BatchNorm2d,
            act_layer=nn.ReLU,
            proj_norm_act=True,
            gate_norm_act=True,
            feature_size=size,
            w_sa_init=0.0,
            w_ja_init=1.0,
        )

    def extra_repr(self) -> str:
        size = "" if self.feature_size is None else f", feature_size={self.feature_size}"
        return f"image_channels={self.image_channels}, text_channels={self.text_channels}{size}"

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        *,
        return_attention: bool = False,
        grid_size: GridSize | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor | tuple[Tensor, CompositeAttention]:
        """Compose.

        Args:
            image_features: reference features ``F_r``, shape ``(B, C, H, W)``, or tokens
                ``(B, N, C)`` with ``N = num_prefix_tokens + H * W``.
            text_features: text feature ``t``, shape ``(B, D)``.
            return_attention: also return the attention maps; this runs the composition
                of the three parts (the two that return maps as their references, attention
                by the explicit formula to get the ``(B, num_heads, H W, H W)`` weights;
                ``F_c`` as the backend chooses).
            grid_size: ``(H, W)`` (or ``H`` for a square grid) of the patch tokens;
                required for tokens, not allowed for a map.
            num_prefix_tokens: tokens before the patches, passed through unchanged.

        Returns:
            ``F_o``, of ``image_features``' shape; with ``return_attention=True`` the pair
            ``(F_o, CompositeAttention)`` (maps over the ``H x W`` patch grid). Under
            :func:`torch.autocast` ``F_o`` has the autocast dtype, as
            :class:`torch.nn.Conv2d`'s output does.

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size,
                a map with ``H = 0`` or ``W = 0``, a map size (or ``grid_size``) other than
                ``feature_size``, or a bad ``grid_size`` or ``num_prefix_tokens``. A batch
                of ``B = 0`` gives an empty output.
        """
        grid = grid_input(
            image_features, "image_features", self.image_channels, grid_size, num_prefix_tokens
        )
        image, text = check_composer_inputs(self, grid.map, text_features)
        if self.feature_size is not None and tuple(image.shape[2:]) != self.feature_size:
            got = f"shape {fmt_shape(image_features)}"
            if grid.is_tokens:
                got = f"grid_size={tuple(image.shape[2:])} for tokens of {got}"
            raise ValueError(
                f"image_features: expected feature map size (H, W) = {self.feature_size} "
                f"(this block's spatial kernel is tied to it), got {got}"
            )
        plan = _kernels.plan(image)
        if plan is not None and not return_attention:
            return grid.output(composite_transformer(self, image, text, plan))
        fused = self.fusion(image, text)
        if not return_attention:
            transformed = self.self_attention(fused)
            preserved = self.preservation(fused, image)
            return grid.output(self.w_sa * transformed + self.w_ja * preserved)
        transformed, weights = self.self_attention(fused, return_weights=True)
        preserved, attention = self.preservation(fused, image, return_attention=True)
        output = grid.output(self.w_sa * transformed + self.w_ja * preserved)
        return output, replace(attention, self_attention=weights)
