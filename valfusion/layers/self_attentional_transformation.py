"""Self-attentional transformation: multi-head self-attention over the positions of a map."""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from valfusion._validation import check_positive_int
from valfusion.layers._autograd import AutogradContext
from valfusion.layers._inputs import check_feature_map, weight_dtype
from valfusion.layers.conv_norm_act import (
    ConvNormAct,
    LayerFactory,
    autocast_dtype,
    like_memory_format,
    use_fused_kernels,
)

__all__ = ["HeadLayout", "SelfAttentionalTransformation"]

HeadLayout = Literal["full", "grouped"]


class _QKVProjectionContext(AutogradContext, Protocol):
    has_bias: bool

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
    """

    @staticmethod
    def forward(
        ctx: _QKVProjectionContext,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        num_heads: int,
        pool: bool,
    ) -> tuple[Tensor, ...]:
        groups, rows, cin = weight.shape
        width = rows // 3
        x = x.contiguous()
        tokens = x.shape[0] * x.shape[1]
        buffer = x.new_empty(tokens, groups, 3, width)
        out = buffer.view(tokens, groups, rows).transpose(0, 1)  # (G, M, 3e), strided
        x_groups = x.view(tokens, groups, cin).transpose(0, 1)  # (G, M, c), strided
        if bias is None:
            torch.bmm(x_groups, weight.transpose(1, 2), out=out)
        else:
            out.copy_(bias[:, None, :].expand_as(out))
            out.baddbmm_(x_groups, weight.transpose(1, 2))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        heads = (
            buffer[:, :, j].reshape(x.shape[0], -1, num_heads, width * groups // num_heads)
            .transpose(1, 2)
            for j in range(3)
        )
        q, k, v = heads
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
        x_groups = x.view(tokens, groups, cin).transpose(0, 1)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = weight.new_zeros(groups, rows) if (need_b and ctx.has_bias) else None
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
            grad = grad.transpose(1, 2).reshape(tokens, groups, width).transpose(0, 1)
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
        return grad_x, grad_w, grad_b, None, None


class SelfAttentionalTransformation(nn.Module):
    """Multi-head self-attention over the ``N = H * W`` positions of a ``(B, C, H, W)`` map.

    ``F_sa = F_proj(concat_i softmax(Q_i K_i^T / sqrt(d)) V_i)`` with ``d = C / num_heads``,
    where ``Q_i, K_i, V_i`` (``N x d``) are learned linear maps of the tokens (1x1 convs).

    Head layouts:

    * ``"full"``: every head projects all ``C`` channels (standard multi-head attention,
      the paper's notation); the q/k/v maps cost ``3 C^2`` per position.
    * ``"grouped"``: the channels are split into ``num_heads`` groups of ``d`` and head
      ``i`` projects only group ``i`` (the official graph); ``3 C^2 / num_heads``. All
      heads run as one batched matrix product.

    ``qkv_weight`` has shape ``(G, 3 C / G, C / G)`` with ``G = 1`` (full) or
    ``G = num_heads`` (grouped): a grouped 1x1 conv. Within group ``g`` the output rows
    are ordered ``(q|k|v, head, d)``, so ``qkv_weight[0]`` of the full layout is laid out
    like timm's ``Attention.qkv.weight``, and head ``i`` of the grouped layout uses
    ``qkv_weight[i]`` = ``[W_q; W_k; W_v]`` on channels ``i*d : (i+1)*d``.

    The fused path calls :func:`torch.nn.functional.scaled_dot_product_attention` and
    never builds the ``N x N`` matrix (on CPU, PyTorch falls back to the explicit formula
    when attention dropout is active, i.e. in training with ``attn_drop > 0``). The
    explicit path is used when ``fused_attn=False`` or the weights are requested.

    Performance: the fused path works on token-major ``(B * N, C)`` memory throughout. The
    q/k/v maps of all heads are one batched GEMM over the channel groups (the grouped
    layout costs ``3 C^2 / num_heads`` per position, never a block-diagonal ``3 C^2``),
    written straight into the ``(B, N, heads, d)`` layout the attention kernel reads and
    returns, and ``F_proj`` is one GEMM on that output. An NCHW input is transposed once
    on the way in and the output once on the way out; a ``channels_last`` input needs
    neither (the output then is ``channels_last`` too). Under :func:`torch.compile` the
    plain composition of ops is traced instead.

    Args:
        channels: ``C``; must be divisible by ``num_heads``.
        num_heads: number of heads.
        head_layout: ``"grouped"`` (default; the official graph's, ``num_heads`` times
            cheaper q/k/v maps) or ``"full"``.
        qkv_bias: add a bias to the q/k/v maps.
        attn_drop: dropout probability on the attention matrix (training only).
        proj_norm_layer: normalisation after the output 1x1 conv ``F_proj``.
        proj_act_layer: activation after ``proj_norm_layer``.
        fused_attn: use the fused kernel when the weights are not requested.

    Raises:
        ValueError: on a bad size, layout or dropout probability.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 2,
        *,
        head_layout: HeadLayout = "grouped",
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_norm_layer: LayerFactory | None = None,
        proj_act_layer: LayerFactory | None = None,
        fused_attn: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if channels % num_heads:
            raise ValueError(
                f"channels: expected a multiple of num_heads={num_heads}, got {channels}"
            )
        if head_layout not in ("full", "grouped"):
            raise ValueError(f"head_layout: expected 'full' or 'grouped', got {head_layout!r}")
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop: expected a probability in [0, 1), got {attn_drop!r}")
        self.head_layout = head_layout
        self.head_dim = channels // num_heads
        self.groups = num_heads if head_layout == "grouped" else 1
        self.fused_attn = fused_attn
        group_in = channels // self.groups
        self.qkv_weight = nn.Parameter(torch.empty(self.groups, 3 * group_in, group_in))
        self.qkv_bias: nn.Parameter | None
        if qkv_bias:
            self.qkv_bias = nn.Parameter(torch.empty(self.groups, 3 * group_in))
        else:
            self.register_parameter("qkv_bias", None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = ConvNormAct(
            channels, channels, 1, norm_layer=proj_norm_layer, act_layer=proj_act_layer
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the q/k/v maps as :class:`torch.nn.Conv2d` initialises a 1x1 conv."""
        bound = 1.0 / math.sqrt(self.qkv_weight.shape[-1])
        # kaiming_uniform_(a=sqrt(5)) on fan_in reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        nn.init.uniform_(self.qkv_weight, -bound, bound)
        if self.qkv_bias is not None:
            nn.init.uniform_(self.qkv_bias, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, "
            f"head_layout={self.head_layout!r}, fused_attn={self.fused_attn}"
        )

    def attend_tokens(
        self, x: Tensor, *, pool: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Fused multi-head attention on token-major features, before ``F_proj``.

        Args:
            x: ``(B, N, C)`` tokens (contiguous memory avoids a copy).
            pool: also return ``x``'s means over tokens and over channels, computed in the
                same pass (the composite transformer's gates read them).

        Returns:
            ``(B, N, C)``, the concatenated head outputs
            ``concat_i softmax(Q_i K_i^T / sqrt(d)) V_i`` (channels ordered ``(head, d)``);
            with ``pool=True`` the triple ``(heads, mean_n x (B, C), mean_c x (B, N))``.
        """
        weight: Tensor = self.qkv_weight
        bias: Tensor | None = self.qkv_bias
        dtype = autocast_dtype(x)
        if dtype is None:
            outs = _GroupedQKVProjection.apply(x, weight, bias, self.num_heads, pool)
        else:
            # What autocast would do to the GEMM: run it in the low-precision dtype.
            weight = weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            with torch.autocast(x.device.type, enabled=False):
                outs = _GroupedQKVProjection.apply(x.to(dtype), weight, bias, self.num_heads, pool)
        q, k, v = outs[:3]
        drop = self.attn_drop.p if self.training else 0.0
        heads = rearrange(F.scaled_dot_product_attention(q, k, v, dropout_p=drop),
                          "b h n d -> b n (h d)")
        if not pool:
            return heads
        return heads, outs[3], outs[4]

    def project_tokens(self, x: Tensor, height: int) -> Tensor:
        """``F_proj`` on token-major head outputs.

        Args:
            x: ``(B, N, C)`` from :meth:`attend_tokens`, ``N = H * W``.
            height: ``H``.

        Returns:
            ``F_sa``, shape ``(B, C, H, W)``, in ``channels_last`` memory.
        """
        return self.proj(rearrange(x, "b (y x) c -> b c y x", y=height))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C, H, W) -> 3 x (B, heads, N, d)``, each with unit stride on ``d``."""
        positions = x.shape[2] * x.shape[3]
        tokens = rearrange(x, "b c y x -> b (y x) c")
        if self.groups == 1:
            bias = None if self.qkv_bias is None else self.qkv_bias[0]
            # One GEMM; BLAS reads the transposed NCHW view directly, no copy.
            qkv = F.linear(tokens, self.qkv_weight[0], bias)
            q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
            return q, k, v
        # One batched GEMM over the heads: (G, B*N, d) x (G, d, 3d). Token-major memory is
        # needed for that view, so an NCHW input is copied once here.
        tokens = rearrange(tokens.contiguous(), "b n (g c) -> g (b n) c", g=self.groups)
        weight = self.qkv_weight.transpose(1, 2)
        if self.qkv_bias is None:
            qkv = torch.bmm(tokens, weight)
        else:
            qkv = torch.baddbmm(rearrange(self.qkv_bias, "g e -> g 1 e"), tokens, weight)
        # n, not b, is given: from zero elements (b = 0) einops could not infer n
        q, k, v = rearrange(qkv, "g (b n) (three d) -> three b g n d", n=positions, three=3)
        return q, k, v

    def forward(self, x: Tensor, *, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Transform a map by self-attention over its positions.

        Args:
            x: the fused map ``X``, shape ``(B, C, H, W)``.
            return_weights: also return the attention weights (explicit path).

        Returns:
            ``F_sa``, shape ``(B, C, H, W)``; with ``return_weights=True`` the pair
            ``(F_sa, weights)``, weights of shape ``(B, num_heads, N, N)``, ``N = H * W``,
            each row a softmax over key positions (before dropout).

        Raises:
            ValueError: on a wrong rank, channel count or dtype, or a map with ``H = 0`` or
                ``W = 0``.
        """
        check_feature_map(x, "x", self.channels, dtype=weight_dtype(self))
        height = x.shape[2]
        if self.fused_attn and not return_weights and use_fused_kernels(x):
            tokens = rearrange(x, "b c y x -> b (y x) c")  # strided unless x is channels_last
            heads = self.attend_tokens(tokens.contiguous())
            assert isinstance(heads, Tensor)
            out = self.project_tokens(heads, height)
            return like_memory_format(out, x)
        q, k, v = self._qkv(x)
        weights = None
        if return_weights or not self.fused_attn:
            weights = ((q * (self.head_dim**-0.5)) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(weights) @ v
        else:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = self.proj(rearrange(out, "b h (y x) d -> b (h d) y x", y=height))
        if return_weights:
            assert weights is not None
            return out, weights
        return out
