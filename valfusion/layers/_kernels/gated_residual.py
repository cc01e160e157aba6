"""Kernel: ``r * (a ⊗ s) [+ t W^T + b]`` in one buffer: preservation, optionally with the mix.

Computes ``out[b, n, c] = r[b, n, c] a[b, c] s[b, n] + sum_k t[b, n, k] W[c, k] + b[c]``.
With ``a``, ``s`` the channel and spatial gates it is ``F_ja = A_ja * F_r``; with ``t, W, b``
the self-attention's head outputs and ``w_sa`` times ``F_proj``'s weight and bias, and
``a`` scaled by ``w_ja``, it is the composite transformer's whole output
``w_sa F_sa + w_ja F_ja``. References it must equal:
:meth:`valfusion.layers.JointAttentionalPreservation.forward` and
:meth:`valfusion.layers.CompositeTransformer.forward`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from einops import rearrange
from torch import Tensor
from torch.autograd.function import once_differentiable

from valfusion.layers._kernels import Elementwise, Plan, autocast_apply, gemm, is_channel_major
from valfusion.layers._kernels.context import AutogradContext
from valfusion.layers._kernels.parts import PreservationParts
from valfusion.layers._kernels.triton_gates import gated_product, gated_product_backward

__all__ = ["gated_residual", "gates", "joint_attentional_preservation"]


class _GatedResidualContext(AutogradContext, Protocol):
    has_bias: bool
    onednn: bool
    use_triton: bool

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
    ``(C, K)`` and bias ``b`` ``(C,)`` accumulated into the same buffer by the GEMM. All
    inputs have one dtype. Neither the ``(B, N, C)`` joint gate ``a ⊗ s`` nor the gated
    product is materialised or saved; backward needs one ``(B, N, C)`` scratch tensor,
    which becomes ``dr``.

    Layouts: the output takes ``r``'s memory layout. For token-major ``r`` the GEMM is one
    ``(B N, K) x (K, C)`` product; for the token view of an NCHW map (channel-major ``r``)
    it is one ``(C, K) x (K, N)`` product per sample, so that an NCHW map is read and
    written in place, without transposes, in both passes. With ``onednn`` (token-major ``r``
    only) the product ``t W^T + b`` is a oneDNN 1x1 convolution (``gemm.py``) into a fresh
    buffer onto which the gated product is added (one ``(B, N, C)`` temporary more).

    With ``use_triton`` (a plan's ``elementwise == "triton"``), the elementwise part of each
    pass is one Triton kernel (``triton_gates.py``): ``r a s (+ b)`` into the output buffer
    before the GEMM; ``dr``, ``da`` and ``ds`` in one read of the output gradient and ``r``
    (the forward of the oneDNN route keeps torch's ops: the two do not meet outside tests).
    """

    @staticmethod
    def forward(
        ctx: _GatedResidualContext,
        reference: Tensor,
        channel_gate: Tensor,
        spatial_gate: Tensor,
        tokens: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        use_triton: bool = False,
        onednn: bool = False,
    ) -> Tensor:
        channel_major = is_channel_major(reference)
        ctx.onednn = onednn and tokens is not None and weight is not None and not channel_major
        ctx.save_for_backward(reference, channel_gate, spatial_gate, tokens, weight)
        ctx.has_bias = bias is not None
        ctx.use_triton = use_triton
        if ctx.onednn:
            assert tokens is not None and weight is not None
            out = gemm.linear(tokens.contiguous(), weight, bias)
            return out.addcmul_(reference * spatial_gate[:, :, None], channel_gate[:, None, :])
        if tokens is None or channel_major:
            out = torch.empty_like(reference)  # reference's layout
        else:
            out = reference.new_empty(reference.shape)  # token-major for the GEMM
        if use_triton:
            gated_product(reference, channel_gate, spatial_gate, bias, out=out)
        else:
            torch.mul(reference, spatial_gate[:, :, None], out=out)
            out.mul_(channel_gate[:, None, :])
            if bias is not None:
                out.add_(bias)
        if tokens is not None and weight is not None:
            if channel_major:  # out[b] (C, N) += W (C, K) t[b]^T (K, N)
                out.transpose(1, 2).baddbmm_(
                    weight.expand(out.shape[0], -1, -1), tokens.transpose(1, 2)
                )
            else:
                out.view(-1, out.shape[-1]).addmm_(
                    tokens.reshape(-1, tokens.shape[-1]), weight.t()
                )
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: _GatedResidualContext, grad: Tensor) -> tuple[Tensor | None, ...]:
        reference, channel_gate, spatial_gate, tokens, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_r = grad_a = grad_s = grad_t = grad_w = grad_b = None
        # A token-major copy of an (e.g. NCHW) output gradient, if one is made, is ours to
        # reuse as the scratch buffer below.
        grad_copy: Tensor | None = None
        per_sample = is_channel_major(reference)
        if tokens is not None and weight is not None and (need[3] or need[4]) and per_sample:
            if need[3]:  # dt[b] (N, K) = g[b] (N, C) W (C, K), g[b] read transposed
                grad_t = torch.bmm(grad, weight.expand(grad.shape[0], -1, -1))
            if need[4]:  # dW = sum_b g[b]^T (C, N) t[b] (N, K): one GEMM per sample
                grad_w = torch.mm(grad[0].t(), tokens[0])
                for b in range(1, grad.shape[0]):
                    grad_w.addmm_(grad[b].t(), tokens[b])
        elif tokens is not None and weight is not None and (need[3] or need[4]) and ctx.onednn:
            contiguous = grad.contiguous()
            if contiguous.data_ptr() != grad.data_ptr():
                grad_copy = contiguous
            grad_t, grad_w = gemm.linear_backward(
                contiguous, tokens.contiguous(), weight, need_input=need[3], need_weight=need[4]
            )
        elif tokens is not None and weight is not None and (need[3] or need[4]):
            grad2d = grad.reshape(-1, grad.shape[-1])
            if grad2d.data_ptr() != grad.data_ptr():
                grad_copy = grad2d.view(grad.shape)
            if need[3]:
                grad_t = tokens.new_empty(tokens.shape)
                torch.mm(grad2d, weight, out=grad_t.view(-1, tokens.shape[-1]))
            if need[4]:
                grad_w = grad2d.t().mm(tokens.reshape(-1, tokens.shape[-1]))
        if need[5] and ctx.has_bias:
            grad_b = grad.sum(dim=(0, 1))
        if ctx.use_triton:
            # The copy, if in r's layout, is read as g and overwritten by dr in one pass.
            own = grad_copy
            if own is not None and own.stride() != reference.stride():
                own = None
            grad_r, grad_a, grad_s = gated_product_backward(
                grad if own is None else own, reference, channel_gate, spatial_gate,
                (need[0], need[1], need[2]), own,
            )
        elif need[1] or need[2]:
            if grad_copy is not None and grad_copy.stride() == reference.stride():
                scratch = grad_copy.mul_(reference)
            else:
                scratch = torch.empty_like(reference)
                torch.mul(grad, reference, out=scratch)
            # (B, 1, N) x (B, N, C) and (B, N, C) x (B, C, 1): reductions without temporaries.
            if need[1]:
                grad_a = torch.bmm(spatial_gate[:, None, :], scratch)[:, 0]
            if need[2]:
                grad_s = torch.bmm(scratch, channel_gate[:, :, None])[..., 0]
            if need[0]:
                grad_r = torch.mul(grad, spatial_gate[:, :, None], out=scratch)
        elif need[0]:
            grad_r = grad * spatial_gate[:, :, None]
        if grad_r is not None and not ctx.use_triton:
            grad_r.mul_(channel_gate[:, None, :])
        return grad_r, grad_a, grad_s, grad_t, grad_w, grad_b, None, None


def gated_residual(
    reference: Tensor,
    channel_gate: Tensor,
    spatial_gate: Tensor,
    tokens: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    onednn: bool = False,
    elementwise: Elementwise = "torch",
) -> Tensor:
    """``out[b, n, c] = r[b, n, c] a[b, c] s[b, n] + sum_k t[b, n, k] W[c, k] + b[c]``.

    Args:
        reference: ``r``, ``(B, N, C)``, any strides.
        channel_gate: ``a``, ``(B, C)``.
        spatial_gate: ``s``, ``(B, N)``.
        tokens: ``t``, ``(B, N, K)`` token-major, or ``None``.
        weight: ``W``, ``(C, K)`` (with ``tokens``).
        bias: ``b``, ``(C,)`` or ``None``.
        onednn: compute ``t W^T + b`` as a oneDNN 1x1 convolution (``gemm.py``) when ``r`` is
            token-major, rather than accumulate a BLAS product onto the gated ``r``.
        elementwise: who computes ``r a s`` and its gradients (``"triton"``: only where
            :func:`~valfusion.layers._kernels.triton_gates.supports` the device).

    Returns:
        ``(B, N, C)`` (the autocast dtype under autocast); token-major (contiguous) when
        ``tokens`` is given and ``r`` is not channel-major, else with ``r``'s strides.
    """
    return autocast_apply(
        _GatedResidual, reference, channel_gate, spatial_gate, tokens, weight, bias,
        elementwise == "triton", onednn,
    )


def gates(
    preservation: PreservationParts, channel_mean: Tensor, spatial_mean: Tensor
) -> tuple[Tensor, Tensor]:
    """The two gates from the pooled fused map: ``gate(F_ch(mean_{h,w} X))`` and
    ``gate(F_sp(mean_c X))``.

    Args:
        preservation: the layer whose gate convs are used.
        channel_mean: ``mean_{h,w} X``, ``(B, C)``.
        spatial_mean: ``mean_c X``, ``(B, 1, H, W)``.

    Returns:
        ``(a, s)`` of shapes ``(B, C)`` and ``(B, N)``, ``N = H * W``.
    """
    channel = preservation.channel_conv(rearrange(channel_mean, "b c -> b c 1 1"))
    spatial = preservation.spatial_conv(spatial_mean)
    return (
        rearrange(preservation.gate(channel), "b c 1 1 -> b c"),
        rearrange(preservation.gate(spatial), "b 1 y x -> b (y x)"),
    )


def joint_attentional_preservation(
    preservation: PreservationParts, fused: Tensor, reference: Tensor, plan: Plan
) -> Tensor:
    """``F_ja = gate(a_ch) * gate(a_sp) * F_r`` without the ``(B, C, H, W)`` joint gate.

    Args:
        preservation: the layer.
        fused: ``X``, ``(B, C, H, W)``.
        reference: ``F_r``, ``(B, C, H, W)``.
        plan: who computes the elementwise part (``plan.elementwise``).

    Returns:
        ``F_ja`` ``(B, C, H, W)`` in ``reference``'s memory layout.
    """
    height = fused.shape[2]
    channel_gate, spatial_gate = gates(
        preservation, fused.mean(dim=(2, 3)), fused.mean(dim=1, keepdim=True)
    )
    preserved = gated_residual(
        rearrange(reference, "b c y x -> b (y x) c"), channel_gate, spatial_gate,
        elementwise=plan.elementwise,
    )
    return rearrange(preserved, "b (y x) c -> b c y x", y=height)
