"""Kernel: ``F_c``'s first 1x1 conv on token-major features, one GEMM onto the text term.

Computes ``y[b, n] = W_r r[b, n] + (W_t t[b] + bias)`` for image tokens ``r`` ``(B, N, C)``
and text ``t`` ``(B, D)``, where ``[W_r, W_t]`` is the conv's ``(O, C + D)`` weight: a 1x1
conv over ``[F_r ; tile(t)]`` without the tiled text. Reference it must equal:
:meth:`valfusion.layers.TextImageFusion.forward` (the conv on the concatenation).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from valfusion.layers._kernels import (
    Plan,
    autocast_apply,
    gemm,
    is_channel_major,
    like_memory_format,
)
from valfusion.layers._kernels.context import AutogradContext
from valfusion.layers._kernels.parts import FusionParts

__all__ = ["fuse_tokens", "text_image_fusion"]


class _TokenProjectionContext(AutogradContext, Protocol):
    onednn: bool

    @property
    def saved_tensors(self) -> tuple[Tensor, Tensor]:  # tokens, weight
        ...


class _TokenProjection(torch.autograd.Function):
    """``y[b, n] = W r[b, n] + u[b]`` on token-major ``r``, with ``r`` passed through.

    ``r`` ``(B, N, C)``, ``W`` ``(O, C)`` (any strides), per-sample term ``u`` ``(B, O)``:
    ``u`` is written into the output buffer and the GEMM accumulates onto it. The second
    output is ``r`` itself (an alias): a caller that needs ``r`` again uses the alias, so
    ``r`` has this one consumer and the backward sums both of its gradients (``dy W`` plus
    the alias's) in one GEMM instead of leaving autograd to add two ``(B, N, C)`` tensors.

    ``r`` is either contiguous (one ``(B N, C) x (C, O)`` product) or the token view of an
    NCHW map (channel-major: one product per sample reading ``(C, N)`` directly; ``dr``
    comes back in the same NCHW layout). With ``onednn`` a contiguous ``r``'s products are
    oneDNN 1x1 convolutions (``gemm.py``) and ``u`` is added after the product.
    """

    @staticmethod
    def forward(
        ctx: _TokenProjectionContext,
        tokens: Tensor,
        weight: Tensor,
        shift: Tensor,
        onednn: bool,
    ) -> tuple[Tensor, Tensor]:
        if not is_channel_major(tokens):
            tokens = tokens.contiguous()
        ctx.onednn = onednn and not is_channel_major(tokens)
        ctx.save_for_backward(tokens, weight)
        if ctx.onednn:
            return gemm.linear(tokens, weight).add_(shift[:, None, :]), tokens
        batch, n, channels = tokens.shape
        out = tokens.new_empty(batch, n, weight.shape[0])
        out.copy_(shift[:, None, :].expand_as(out))
        if is_channel_major(tokens):
            out.baddbmm_(tokens, weight.t().expand(batch, -1, -1))
        else:
            out.view(batch * n, -1).addmm_(tokens.view(batch * n, channels), weight.t())
        return out, tokens

    @staticmethod
    @once_differentiable
    def backward(
        ctx: _TokenProjectionContext, grad: Tensor | None, grad_tokens: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        tokens, weight = ctx.saved_tensors
        batch, n, channels = tokens.shape
        grad_r = grad_w = grad_u = None
        if grad is None:
            return grad_tokens, None, None, None
        if ctx.onednn:
            grad_r, grad_w = gemm.linear_backward(
                grad.contiguous(),
                tokens,
                weight,
                need_input=ctx.needs_input_grad[0],
                need_weight=ctx.needs_input_grad[1],
            )
            if grad_r is not None and grad_tokens is not None:
                grad_r.add_(grad_tokens)
        elif is_channel_major(tokens):
            if ctx.needs_input_grad[0]:  # dr[b] (C, N) = W^T (C, O) dy[b]^T (O, N)
                product = (weight.t().expand(batch, -1, -1), grad.transpose(1, 2))
                if grad_tokens is None:
                    grad_r = torch.bmm(*product).transpose(1, 2)
                else:
                    grad_r = torch.baddbmm(grad_tokens.transpose(1, 2), *product).transpose(1, 2)
            if ctx.needs_input_grad[1]:  # dW = sum_b dy[b]^T (O, N) r[b] (N, C)
                grad_w = torch.mm(grad[0].t(), tokens[0])
                for b in range(1, batch):
                    grad_w.addmm_(grad[b].t(), tokens[b])
        else:
            grad2d = grad.reshape(batch * n, -1)
            if ctx.needs_input_grad[0]:
                grad_r = tokens.new_empty(tokens.shape)
                if grad_tokens is None:
                    torch.mm(grad2d, weight, out=grad_r.view(batch * n, channels))
                else:
                    torch.addmm(grad_tokens.reshape(batch * n, channels), grad2d, weight,
                                out=grad_r.view(batch * n, channels))
            if ctx.needs_input_grad[1]:
                grad_w = grad2d.t().mm(tokens.view(batch * n, channels))
        if ctx.needs_input_grad[2]:
            grad_u = grad.sum(dim=1)
        return grad_r, grad_w, grad_u, None


def fuse_tokens(
    fusion: FusionParts, tokens: Tensor, text: Tensor, height: int, *, onednn: bool = False
) -> tuple[Tensor, Tensor]:
    """``X = F_c([F_r ; tile(t)])`` on token-major image features.

    Args:
        fusion: the layer whose weights are used.
        tokens: ``F_r`` as ``(B, N, C)`` tokens, ``N = H * W`` in row-major ``(y, x)``
            order: contiguous (the first layer is one GEMM), or the token view of an NCHW
            map (one GEMM per sample reads it in place; other strides are copied).
        text: ``t``, ``(B, D)``.
        height: ``H``.
        onednn: compute the product of contiguous ``tokens`` as a oneDNN 1x1 convolution
            (``gemm.py``) rather than a BLAS matrix product.

    Returns:
        ``(X, F_r alias)``: ``X`` ``(B, C_out, H, W)`` in ``channels_last`` memory, and an
        alias of ``tokens`` (cast to the autocast dtype under autocast) for the caller to use
        instead of them: its gradient is then summed into the first layer's input gradient.
    """
    conv = fusion.fuse.conv
    image_weight, text_weight = rearrange(conv.weight, "o i 1 1 -> o i").split(
        [fusion.image_channels, fusion.text_channels], dim=1
    )
    shift = F.linear(text, text_weight, conv.bias)  # (B, O): W_t t + b
    x, tokens = autocast_apply(_TokenProjection, tokens, image_weight, shift, onednn)
    x = rearrange(x, "b (y x) c -> b c y x", y=height)
    x = fusion.fuse.norm(x)
    if type(fusion.fuse.act) is nn.ReLU and isinstance(fusion.fuse.norm, nn.BatchNorm2d):
        # Batch norm's backward does not need its output: rectify that fresh tensor in
        # place rather than allocating another (B, N, C) buffer.
        x = F.relu(x, inplace=True)
    else:
        x = fusion.fuse.act(x)
    return fusion.mlp(x), tokens


def text_image_fusion(fusion: FusionParts, image: Tensor, text: Tensor, plan: Plan) -> Tensor:
    """``X = F_c([F_r ; tile(t)])`` for a ``(B, C, H, W)`` map (the layer's fused path).

    Args:
        fusion: the layer.
        image: ``F_r``: an NCHW or ``channels_last`` map, or the map view of tokens.
        text: ``t``, ``(B, D)``.
        plan: the layout (an NCHW map from ``plan.per_sample_min_tokens`` positions on is
            read in place by per-sample GEMMs; others are made token-major once).

    Returns:
        ``X`` ``(B, C_out, H, W)`` in ``image``'s memory layout.
    """
    tokens = rearrange(image, "b c y x -> b (y x) c")
    in_place = plan.per_sample_min_tokens is not None and (
        is_channel_major(tokens) and tokens.shape[1] >= plan.per_sample_min_tokens
    )
    tokens = tokens if in_place else tokens.contiguous()
    fused, _ = fuse_tokens(fusion, tokens, text, image.shape[2], onednn=plan.gemm == "onednn")
    return like_memory_format(fused, image)
