"""Joint-attentional preservation: channel and spatial gates from the fused map, on the reference."""

from __future__ import annotations

from torch import Tensor, nn

from valfusion._validation import check_positive_int, check_same_batch, check_size
from valfusion.layers import _kernels
from valfusion.layers._inputs import GridSize, check_feature_map, grid_input, weight_dtype
from valfusion.layers._kernels.gated_residual import joint_attentional_preservation
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.conv_norm_act import ConvNormAct, LayerFactory

__all__ = ["JointAttentionalPreservation"]


class JointAttentionalPreservation(nn.Module):
    """Gate the reference features by attention computed from the fused map.

    ``a_ch = F_ch(mean_{h,w} X)`` ``(B, C, 1, 1)``, ``a_sp = F_sp(mean_c X)`` ``(B, 1, H, W)``,
    ``A_ja = gate(a_ch) * gate(a_sp)`` ``(B, C, H, W)``, ``F_ja = A_ja * F_r``.

    ``F_ch`` is a 1x1 conv ``C -> C`` and ``F_sp`` a ``k_h x k_w`` conv ``1 -> 1`` with
    TensorFlow "same" padding, each optionally followed by ``norm_layer`` and
    ``act_layer``. The default 7x7 kernel works at any resolution (CBAM's choice); the
    official graph uses a kernel the size of the whole map, with batch norm and ReLU,
    which puts every gate in ``[0.5, 1)``.

    The fused backend (:func:`valfusion.layers.set_backend`) writes ``A_ja * F_r`` as one
    buffer in two in-place passes: the ``(B, C, H, W)`` joint gate is never built, and
    backward needs one scratch tensor, which becomes ``dF_r``.

    Token input (ViT / CLIP patch tokens): ``fused`` and ``reference`` may be ``(B, N, C)``
    with ``grid_size=(H, W)``; the gates are computed from the ``H * W`` patch tokens of
    ``fused`` exactly as from the map ``(B, C, H, W)`` they form (the spatial gate's conv
    and the means are defined on that grid) and gate the patch tokens of ``reference``;
    the ``num_prefix_tokens`` first tokens of ``reference`` (class token, registers) pass
    through unchanged (those of ``fused`` are not read). The output is ``(B, N, C)``.

    Args:
        channels: ``C``.
        spatial_kernel_size: ``k`` or ``(k_h, k_w)`` of ``F_sp``.
        norm_layer: normalisation after both gate convs (``None`` for none).
        act_layer: activation after ``norm_layer`` (``None`` for none).
        gate_layer: the squashing function, default ``nn.Sigmoid``.

    Raises:
        ValueError: on a non-positive size.
    """

    def __init__(
        self,
        channels: int,
        spatial_kernel_size: int | tuple[int, int] = 7,
        *,
        norm_layer: LayerFactory | None = None,
        act_layer: LayerFactory | None = None,
        gate_layer: LayerFactory = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.channel_conv = ConvNormAct(
            channels, channels, 1, norm_layer=norm_layer, act_layer=act_layer
        )
        self.spatial_conv = ConvNormAct(
            1, 1, spatial_kernel_size, norm_layer=norm_layer, act_layer=act_layer
        )
        self.gate = gate_layer()

    def forward(
        self,
        fused: Tensor,
        reference: Tensor,
        *,
        return_attention: bool = False,
        grid_size: GridSize | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor | tuple[Tensor, CompositeAttention]:
        """Preserve the reference features where the fused map says so.

        Args:
            fused: the fused map ``X``, shape ``(B, C, H, W)``, or tokens ``(B, N, C)``
                with ``N = num_prefix_tokens + H * W``.
            reference: the reference features ``F_r``, of ``fused``'s shape.
            return_attention: also return the gates.
            grid_size: ``(H, W)`` (or ``H`` for a square grid) of the patch tokens;
                required for tokens, not allowed for maps.
            num_prefix_tokens: tokens before the patches; ``reference``'s pass through.

        Returns:
            ``F_ja``, of ``reference``'s shape; with ``return_attention=True`` the pair
            ``(F_ja, CompositeAttention)`` whose ``self_attention`` is ``None`` (gates on
            the ``H x W`` grid). Under :func:`torch.autocast` ``F_ja`` has the autocast
            dtype, as :class:`torch.nn.Conv2d`'s output does (``F_r`` is cast to it, as a
            convolution's input is).

        Raises:
            ValueError: on a wrong rank, channel count or dtype, a map with ``H = 0`` or
                ``W = 0``, ``reference`` and ``fused`` of different batch or map sizes,
                or a bad ``grid_size`` or ``num_prefix_tokens``.
        """
        fused_grid = grid_input(fused, "fused", self.channels, grid_size, num_prefix_tokens)
        grid = grid_input(reference, "reference", self.channels, grid_size, num_prefix_tokens)
        fused = check_feature_map(fused_grid.map, "fused", self.channels, dtype=weight_dtype(self))
        reference = check_feature_map(
            grid.map, "reference", self.channels, dtype=fused.dtype, dtype_of="fused"
        )
        check_same_batch(fused, "fused", reference, "reference")
        check_size(reference, "reference", 2, fused.shape[2], "height H (as in fused)")
        check_size(reference, "reference", 3, fused.shape[3], "width W (as in fused)")
        plan = _kernels.plan(reference)
        if plan is not None and not return_attention:
            return grid.output(joint_attentional_preservation(self, fused, reference, plan))
        channel_gate = self.gate(self.channel_conv(fused.mean(dim=(2, 3), keepdim=True)))
        spatial_gate = self.gate(self.spatial_conv(fused.mean(dim=1, keepdim=True)))
        joint = channel_gate * spatial_gate
        # Under autocast F_r is cast to the gates' (autocast) dtype, as a conv's input is.
        preserved = grid.output(joint * reference.to(joint.dtype))
        if return_attention:
            return preserved, CompositeAttention(channel_gate, spatial_gate, joint)
        return preserved
