"""Joint-attentional preservation: channel and spatial gates from the fused map, on the reference."""

from __future__ import annotations

from typing import Protocol

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from valfusion._validation import check_positive_int, check_same_batch, check_size
from valfusion.layers._autograd import AutogradContext
from valfusion.layers._inputs import check_feature_map, weight_dtype
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.conv_norm_act import (
    ConvNormAct,
    LayerFactory,
    is_channel_major,
    use_fused_kernels,
)

__all__ = ["JointAttentionalPreservation", "gated_residual"]


class _GatedProductContext(AutogradContext, Protocol):
    bias_dtype: torch.dtype | None

    @property
    def saved_tensors(
        self,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        # reference, channel_gate, spatial_gate, tokens, weight
        ...


class _GatedResidual(torch.autograd.Function):
    """``out = r * (a ⊗ s) [+ t W^T + b]`` on ``(B, N, C)`` with one output buffer.

    ``r`` ``(B, N, C)`` (any strides), channel gate ``a`` ``(B, C)``, spatial gate ``s``
    ``(B, N)``; optionally token-major ``t`` ``(B, N, K)`` through a linear map ``W``
    ``(C, K)`` and bias ``b`` ``(C,)`` accumulated into the same buffer by the GEMM.
    Neither the ``(B, N, C)`` joint gate ``a ⊗ s`` nor the gated product is materialised
    or saved; backward needs one ``(B, N, C)`` scratch tensor, which becomes ``dr``.

    Layouts: the output takes ``r``'s memory layout. For token-major ``r`` the GEMM is one
    ``(B N, K) x (K, C)`` product; for the token view of an NCHW map (channel-major ``r``)
    it is one ``(C, K) x (K, N)`` product per sample, so that an NCHW map is read and
    written in place, without transposes, in both passes.
    """

    @staticmethod
    def forward(
        ctx: _GatedProductContext,
        reference: Tensor,
        channel_gate: Tensor,
        spatial_gate: Tensor,
        tokens: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        dtype = reference.dtype if tokens is None else torch.promote_types(
            reference.dtype, tokens.dtype
        )
        channel_major = is_channel_major(reference)
        if tokens is None or channel_major:
            out = torch.empty_like(reference, dtype=dtype)  # reference's layout
        else:
            batch, n, c = reference.shape
            out = reference.new_empty(batch, n, c, dtype=dtype)  # token-major for the GEMM
        torch.mul(reference, spatial_gate[:, :, None], out=out)
        out.mul_(channel_gate[:, None, :])
        if bias is not None:
            out.add_(bias)
        if tokens is not None and weight is not None:
            if channel_major:  # out[b] (C, N) += W (C, K) t[b]^T (K, N)
                out_cn = out.transpose(1, 2)
                product = (weight.expand(out.shape[0], -1, -1), tokens.transpose(1, 2))
                if tokens.dtype == out.dtype:
                    out_cn.baddbmm_(*product)
                else:  # autocast: the GEMM in low precision, the sum in the output dtype
                    out_cn.add_(torch.bmm(*product))
            else:
                out2d = out.view(-1, out.shape[-1])
                tokens2d = tokens.reshape(-1, tokens.shape[-1])
                if tokens.dtype == out.dtype:
                    out2d.addmm_(tokens2d, weight.t())
                else:
                    out2d.add_(torch.mm(tokens2d, weight.t()))
        ctx.save_for_backward(reference, channel_gate, spatial_gate, tokens, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: _GatedProductContext, grad: Tensor) -> tuple[Tensor | None, ...]:
        reference, channel_gate, spatial_gate, tokens, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_r = grad_a = grad_s = grad_t = grad_w = grad_b = None
        # A token-major copy of an (e.g. NCHW) output gradient, if one is made, is ours to
        # reuse as the scratch buffer below.
        grad_copy: Tensor | None = None
        per_sample = is_channel_major(reference)
        if tokens is not None and weight is not None and (need[3] or need[4]) and per_sample:
            grad_low = grad.to(tokens.dtype)
            if need[3]:  # dt[b] (N, K) = g[b] (N, C) W (C, K), g[b] read transposed
                grad_t = torch.bmm(grad_low, weight.expand(grad.shape[0], -1, -1))
            if need[4]:  # dW = sum_b g[b]^T (C, N) t[b] (N, K): one GEMM per sample
                grad_w = torch.mm(grad_low[0].t(), tokens[0])
                for b in range(1, grad.shape[0]):
                    grad_w.addmm_(grad_low[b].t(), tokens[b])
        elif tokens is not None and weight is not None and (need[3] or need[4]):
            grad2d = grad.reshape(-1, grad.shape[-1]).to(tokens.dtype)
            if grad2d.data_ptr() != grad.data_ptr() and grad2d.dtype == grad.dtype:
                grad_copy = grad2d.view(grad.shape)
            if need[3]:
                grad_t = tokens.new_empty(tokens.shape)
                torch.mm(grad2d, weight, out=grad_t.view(-1, tokens.shape[-1]))
            if need[4]:
                grad_w = grad2d.t().mm(tokens.reshape(-1, tokens.shape[-1]))
        if need[5] and ctx.bias_dtype is not None:
            grad_b = grad.sum(dim=(0, 1)).to(ctx.bias_dtype)
        if need[1] or need[2]:
            if grad_copy is not None and grad_copy.stride() == reference.stride():
                scratch = grad_copy.mul_(reference)
            else:
                scratch = torch.empty_like(reference, dtype=grad.dtype)
                torch.mul(grad, reference, out=scratch)
            # (B, 1, N) x (B, N, C) and (B, N, C) x (B, C, 1): reductions without temporaries.
            if need[1]:
                grad_a = torch.bmm(spatial_gate[:, None, :].to(scratch.dtype), scratch)[:, 0]
                grad_a = grad_a.to(channel_gate.dtype)
            if need[2]:
                grad_s = torch.bmm(scratch, channel_gate[:, :, None].to(scratch.dtype))[..., 0]
                grad_s = grad_s.to(spatial_gate.dtype)
            if need[0]:
                grad_r = torch.mul(grad, spatial_gate[:, :, None], out=scratch)
        elif need[0]:
            grad_r = grad * spatial_gate[:, :, None]
        if grad_r is not None:
            grad_r.mul_(channel_gate[:, None, :])
            grad_r = grad_r.to(reference.dtype)
        return grad_r, grad_a, grad_s, grad_t, grad_w, grad_b


def gated_residual(
    reference: Tensor,
    channel_gate: Tensor,
    spatial_gate: Tensor,
    tokens: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """``r * (a ⊗ s) [+ t W^T + b]`` in one buffer: preservation, optionally with the mix.

    ``out[b, n, c] = r[b, n, c] a[b, c] s[b, n] + sum_k t[b, n, k] W[c, k] + b[c]``.
    With ``t, W, b`` = the self-attention's head outputs and ``w_sa`` times ``F_proj``'s
    weight and bias, and ``a`` = ``w_ja`` times the channel gate, this is the composite
    transformer's whole output ``w_sa F_sa + w_ja F_ja`` in one GEMM-accumulated buffer.

    Args:
        reference: ``r``, ``(B, N, C)``, any strides.
        channel_gate: ``a``, ``(B, C)``.
        spatial_gate: ``s``, ``(B, N)``.
        tokens: ``t``, ``(B, N, K)`` token-major, or ``None``.
        weight: ``W``, ``(C, K)`` (with ``tokens``).
        bias: ``b``, ``(C,)`` or ``None``.

    Returns:
        ``(B, N, C)``; token-major (contiguous) when ``tokens`` is given, else with
        ``reference``'s strides.
    """
    return _GatedResidual.apply(reference, channel_gate, spatial_gate, tokens, weight, bias)


class JointAttentionalPreservation(nn.Module):
    """Gate the reference features by attention computed from the fused map.

    ``a_ch = F_ch(mean_{h,w} X)`` ``(B, C, 1, 1)``, ``a_sp = F_sp(mean_c X)`` ``(B, 1, H, W)``,
    ``A_ja = gate(a_ch) * gate(a_sp)`` ``(B, C, H, W)``, ``F_ja = A_ja * F_r``.

    ``F_ch`` is a 1x1 conv ``C -> C`` and ``F_sp`` a ``k_h x k_w`` conv ``1 -> 1`` with
    TensorFlow "same" padding, each optionally followed by ``norm_layer`` and
    ``act_layer``. The default 7x7 kernel works at any resolution (CBAM's choice); the
    official graph uses a kernel the size of the whole map, with batch norm and ReLU,
    which puts every gate in ``[0.5, 1)``.

    Performance: without ``return_attention`` the product ``A_ja * F_r`` is one buffer
    written in two in-place passes (:func:`gated_residual`); the ``(B, C, H, W)`` joint
    gate is never built, and backward needs one scratch tensor, which becomes ``dF_r``.

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
            ValueError: on a wrong rank, channel count or dtype, a map with ``H = 0`` or
                ``W = 0``, or when ``reference`` and ``fused`` differ in batch size or map
                size.
        """
        check_feature_map(fused, "fused", self.channels, dtype=weight_dtype(self))
        check_feature_map(reference, "reference", self.channels, dtype=fused.dtype, dtype_of="fused")
        check_same_batch(fused, "fused", reference, "reference")
        check_size(reference, "reference", 2, fused.shape[2], "height H (as in fused)")
        check_size(reference, "reference", 3, fused.shape[3], "width W (as in fused)")
        height, width = fused.shape[2:]
        channel_gate, spatial_gate = self.gates(
            fused.sum(dim=(2, 3)) / (height * width), fused.sum(dim=1, keepdim=True) / fused.shape[1]
        )
        if not return_attention and use_fused_kernels(reference):
            preserved = gated_residual(
                rearrange(reference, "b c y x -> b (y x) c"),
                rearrange(channel_gate, "b c 1 1 -> b c"),
                rearrange(spatial_gate, "b 1 y x -> b (y x)"),
            )
            return rearrange(preserved, "b (y x) c -> b c y x", y=height)
        joint = channel_gate * spatial_gate
        preserved = joint * reference
        if return_attention:
            return preserved, CompositeAttention(channel_gate, spatial_gate, joint)
        return preserved

    def gates(self, channel_mean: Tensor, spatial_mean: Tensor) -> tuple[Tensor, Tensor]:
        """The two gates from the pooled fused map.

        Args:
            channel_mean: ``mean_{h,w} X``, shape ``(B, C)``.
            spatial_mean: ``mean_c X``, shape ``(B, 1, H, W)``.

        Returns:
            ``(gate(a_ch), gate(a_sp))`` of shapes ``(B, C, 1, 1)`` and ``(B, 1, H, W)``.
        """
        channel_gate = self.gate(self.channel_conv(rearrange(channel_mean, "b c -> b c 1 1")))
        spatial_gate = self.gate(self.spatial_conv(spatial_mean))
        return channel_gate, spatial_gate
