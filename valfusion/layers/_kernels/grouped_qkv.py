"""Kernel: the q/k/v maps of every head as one batched GEMM, then attention, on tokens.

Computes, for token-major ``x`` ``(B, N, C)`` split into ``G`` channel groups of ``c``,
``[q; k; v]_g = x_g W_g^T + b_g`` with ``W`` the layer's ``qkv_weight`` ``(G, 3 e, c)``, then
``concat_i softmax(q_i k_i^T / sqrt(d)) v_i`` over heads of width ``d``. Reference it must
equal: :meth:`valfusion.layers.SelfAttentionalTransformation.forward` (before ``F_proj``
here; :func:`self_attentional_transformation` includes it).

Attention is :func:`torch.nn.functional.scaled_dot_product_attention` when the layer's
``fused_attn`` is set, else the explicit formula. On CUDA, per PyTorch's documentation of
that function, SDPA chooses among FlashAttention-2, memory-efficient attention and its C++
"math" implementation of the formula, by the inputs; FlashAttention takes head dims up to
256 only, so the official head layout's mid and high levels (head dims 512 and 1024, two
grouped heads on 1024 and 2048 channels) get one of the other two, the math one building
the ``N x N`` matrix. Which one runs there, and how fast, is not yet measured on a GPU.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.autograd.function import once_differentiable

from valfusion.layers._kernels import Plan, autocast_apply, gemm, like_memory_format
from valfusion.layers._kernels.context import AutogradContext
from valfusion.layers._kernels.parts import SelfAttentionParts

__all__ = ["attend", "self_attentional_transformation"]


class _QKVProjectionContext(AutogradContext, Protocol):
    has_bias: bool
    onednn: bool

    @property
    def saved_tensors(self) -> tuple[Tensor, Tensor]:  # x, weight
        ...


class _GroupedQKVProjection(torch.autograd.Function):
    """``q/k/v`` of every head from token-major ``x`` by one batched GEMM over channel groups.

    Forward: ``x`` ``(B, N, G * c)`` (``M = B * N`` tokens, ``G`` groups of ``c`` channels),
    ``weight`` ``(G, 3 * e, c)`` with rows ``(q|k|v, e)`` per group, optional ``bias``
    ``(G, 3 * e)``. One ``(G, M, c) x (G, c, 3 e)`` batched product writes into a
    ``(M, G, 3, e)`` buffer, so that ``q``, ``k`` and ``v`` come out as ``(B, heads, N, d)``
    views whose memory is token-major ``(B, N, heads, d)``: the layout in which the fused
    attention kernel returns its output and gradients, so no operand is ever copied.

    With ``pool=True`` it also returns the means of ``x`` over tokens ``(B, C)`` and over
    channels ``(B, N)`` (the inputs of the preservation gates), so that ``x`` has one
    consumer and its gradient is accumulated here rather than by autograd.

    Backward receives ``dq``, ``dk``, ``dv`` separately (no ``(M, 3 C)`` stacking) and
    accumulates into one fresh ``dx`` in place:
    ``dx_g = dq_g W_q,g + dk_g W_k,g + dv_g W_v,g (+ d mean_n / N + d mean_c / C)``.

    With ``onednn`` the product is one grouped oneDNN 1x1 convolution (``gemm.py``) writing
    the same ``(M, G, 3, e)`` memory, and the backward stacks ``dq``, ``dk``, ``dv`` into one
    such buffer for a single grouped ``convolution_backward``.
    """

    @staticmethod
    def forward(
        ctx: _QKVProjectionContext,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        num_heads: int,
        pool: bool,
        onednn: bool,
    ) -> tuple[Tensor, ...]:
        groups, rows, _ = weight.shape
        width = rows // 3
        x = x.contiguous()
        tokens = x.shape[0] * x.shape[1]
        if onednn:
            flat_bias = None if bias is None else rearrange(bias, "g r -> (g r)")
            projected = gemm.linear(x, rearrange(weight, "g r c -> (g r) c"), flat_bias, groups)
            buffer = projected.view(tokens, groups, 3, width)
        else:
            buffer = x.new_empty(tokens, groups, 3, width)
            # .view, not rearrange, for the out= target: it must alias the buffer, and .view
            # fails loudly where a reshape would silently copy.
            out = buffer.view(tokens, groups, rows).transpose(0, 1)  # (G, M, 3e), strided
            x_groups = rearrange(x, "b n (g c) -> g (b n) c", g=groups)  # strided view
            if bias is None:
                torch.bmm(x_groups, weight.transpose(1, 2), out=out)
            else:
                out.copy_(bias[:, None, :].expand_as(out))
                out.baddbmm_(x_groups, weight.transpose(1, 2))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.onednn = onednn
        # Within a group the rows are (head of the group, d); views, memory (B, N, heads, d).
        q, k, v = (
            rearrange(
                buffer[:, :, j],
                "(b n) g (h d) -> b (g h) n d",
                n=x.shape[1],
                d=width * groups // num_heads,
            )
            for j in range(3)
        )
        if not pool:
            return q, k, v
        return q, k, v, x.mean(dim=1), x.mean(dim=2)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: _QKVProjectionContext, *grads: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        tokens = x.shape[0] * x.shape[1]
        groups, rows, cin = weight.shape
        width = rows // 3
        x_groups = rearrange(x, "b n (g c) -> g (b n) c", g=groups)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.onednn:
            return _onednn_backward(ctx, x, weight, grads)
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = weight.new_zeros(groups, rows) if (need_b and ctx.has_bias) else None
        # An out= target below: .view (see forward).
        grad_x_groups = None if grad_x is None else grad_x.view(tokens, groups, cin).transpose(0, 1)
        pooled = grads[3:] if len(grads) == 5 else (None, None)
        first = True
        if grad_x is not None and (pooled[0] is not None or pooled[1] is not None):
            # Start dx from the gradients of the two means (one broadcast pass); the GEMMs
            # below accumulate onto it.
            n, c = x.shape[1], x.shape[2]
            zero = grad_x.new_zeros(())
            by_channel = zero if pooled[0] is None else pooled[0][:, None, :] / n
            by_token = zero if pooled[1] is None else pooled[1][:, :, None] / c
            torch.add(by_channel, by_token, out=grad_x)
            first = False
        for j, grad in enumerate(grads[:3]):
            if grad is None:
                continue
            # (B, heads, N, d) -> (G, M, e); free when the memory is (B, N, heads, d).
            grad = rearrange(grad, "b (g h) n d -> g (b n) (h d)", g=groups)
            rows_j = slice(j * width, (j + 1) * width)
            if grad_x_groups is not None:
                if first:
                    torch.bmm(grad, weight[:, rows_j], out=grad_x_groups)
                    first = False
                else:
                    grad_x_groups.baddbmm_(grad, weight[:, rows_j])
            if grad_w is not None:
                torch.bmm(grad.transpose(1, 2), x_groups, out=grad_w[:, rows_j])
            if grad_b is not None:
                grad_b[:, rows_j] = grad.sum(dim=1)
        if grad_x is not None and first:
            grad_x.zero_()
        if grad_w is not None:
            for j, grad in enumerate(grads[:3]):
                if grad is None:
                    grad_w[:, j * width : (j + 1) * width].zero_()
        return grad_x, grad_w, grad_b, None, None, None


def _onednn_backward(
    ctx: _QKVProjectionContext, x: Tensor, weight: Tensor, grads: tuple[Tensor | None, ...]
) -> tuple[Tensor | None, ...]:
    """:class:`_GroupedQKVProjection`'s backward when its product was a oneDNN convolution:
    ``dq``, ``dk``, ``dv`` stacked into one ``(B, N, G * 3 e)`` buffer (zeros for a missing
    one), one grouped ``convolution_backward`` for ``dx`` and ``dW``, then the means'
    gradients added to ``dx``."""
    batch, n, c = x.shape
    groups, rows, cin = weight.shape
    width = rows // 3
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    stacked = x.new_empty(batch * n, groups, 3, width)
    for j, grad in enumerate(grads[:3]):
        if grad is None:
            stacked[:, :, j].zero_()
        else:
            stacked[:, :, j] = rearrange(grad, "b (g h) n d -> (b n) g (h d)", g=groups)
    stacked_tokens = stacked.view(batch, n, groups * rows)
    grad_x, grad_w = gemm.linear_backward(
        stacked_tokens,
        x,
        rearrange(weight, "g r c -> (g r) c"),
        groups,
        need_input=need_x,
        need_weight=need_w,
    )
    grad_b = None
    if need_b and ctx.has_bias:
        grad_b = stacked.view(batch * n, groups, rows).sum(dim=0)
    pooled = grads[3:] if len(grads) == 5 else (None, None)
    if grad_x is not None:
        if pooled[0] is not None:
            grad_x.add_(pooled[0][:, None, :], alpha=1 / n)
        if pooled[1] is not None:
            grad_x.add_(pooled[1][:, :, None], alpha=1 / c)
    if grad_w is not None:
        grad_w = grad_w.view(groups, rows, cin)
    return grad_x, grad_w, grad_b, None, None, None


def attend(
    block: SelfAttentionParts, x: Tensor, *, pool: bool = False, onednn: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Multi-head attention on token-major features, before ``F_proj``.

    Args:
        block: the layer whose weights, dropout and ``fused_attn`` are used.
        x: ``(B, N, C)`` tokens (contiguous memory avoids a copy).
        pool: also return ``x``'s means over tokens and over channels, computed in the
            same pass (the composite transformer's gates read them).
        onednn: compute the q/k/v product as a grouped oneDNN 1x1 convolution
            (``gemm.py``) rather than a batched BLAS product.

    Returns:
        ``(heads, mean_n x, mean_c x)``: ``heads`` ``(B, N, C)``, the concatenated head
        outputs ``concat_i softmax(Q_i K_i^T / sqrt(d)) V_i`` (channels ordered
        ``(head, d)``); the means ``(B, C)`` and ``(B, N)`` with ``pool=True``, else ``None``.
    """
    outs = autocast_apply(
        _GroupedQKVProjection, x, block.qkv_weight, block.qkv_bias, block.num_heads, pool, onednn
    )
    q, k, v = outs[:3]
    if block.fused_attn:
        drop = block.attn_drop.p if block.training else 0.0
        heads = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
    else:
        weights = ((q * (block.head_dim**-0.5)) @ k.transpose(-2, -1)).softmax(dim=-1)
        heads = block.attn_drop(weights) @ v
    heads = rearrange(heads, "b h n d -> b n (h d)")
    return (heads, outs[3], outs[4]) if pool else (heads, None, None)


def self_attentional_transformation(block: SelfAttentionParts, x: Tensor, plan: Plan) -> Tensor:
    """``F_sa = F_proj(MHSA(X))`` for a ``(B, C, H, W)`` map (the layer's fused path).

    The map is made token-major once (no copy for a ``channels_last`` map or tokens);
    every product is then one (batched) GEMM on ``(B N, C)`` memory.

    Args:
        block: the layer.
        x: ``X``: an NCHW or ``channels_last`` map, or the map view of tokens.
        plan: the GEMM route (``plan.gemm``); this kernel is token-major in every plan.

    Returns:
        ``F_sa``, shape ``(B, C, H, W)``, in ``x``'s memory layout.
    """
    tokens = rearrange(x, "b c y x -> b (y x) c").contiguous()
    heads, _, _ = attend(block, tokens, onednn=plan.gemm == "onednn")
    out = block.proj(rearrange(heads, "b (y x) c -> b c y x", y=x.shape[2]))
    return like_memory_format(out, x)
