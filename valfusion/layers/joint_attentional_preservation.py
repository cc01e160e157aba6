"""Joint-attentional preservation: channel and spatial gates from the fused map, on the reference."""

from __future__ import annotations

from torch import Tensor, nn

from valfusion._validation import check_positive_int, check_same_batch, check_size
from valfusion.layers._inputs import check_feature_map
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
        self, fused: Tensor, reference: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention]:
        """Preserve the reference features where the fused map says so.

        Args:
            fused: the fused map ``X``, shape ``(B, C, H, W)``.
            reference: the reference features ``F_r``, shape ``(B, C, H, W)``.
            return_attention: also return the gates.

        Returns:
            ``F_ja``, shape ``(B, C, H, W)``; with ``return_attention=True`` the pair
            ``(F_ja, CompositeAttention)`` whose ``self_attention`` is ``None``.

        Raises:
            ValueError: on a wrong rank, channel count or dtype, or when ``reference`` and
                ``fused`` differ in batch size or map size.
        """
        check_feature_map(fused, "fused", self.channels)
        check_feature_map(reference, "reference", self.channels)
        check_same_batch(fused, "fused", reference, "reference")
        check_size(reference, "reference", 2, fused.shape[2], "height H (as in fused)")
        check_size(reference, "reference", 3, fused.shape[3], "width W (as in fused)")
        channel_gate = self.gate(self.channel_conv(fused.mean(dim=(2, 3), keepdim=True)))
        spatial_gate = self.gate(self.spatial_conv(fused.mean(dim=1, keepdim=True)))
        joint = channel_gate * spatial_gate
        preserved = joint * reference
        if return_attention:
            return preserved, CompositeAttention(channel_gate, spatial_gate, joint)
        return preserved
