"""Self-attentional transformation: multi-head self-attention over the positions of a map."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers import _kernels
from valfusion.layers._inputs import GridSize, check_feature_map, grid_input, weight_dtype
from valfusion.layers._kernels.grouped_qkv import self_attentional_transformation
from valfusion.layers.conv_norm_act import ConvNormAct, LayerFactory

__all__ = ["HeadLayout", "SelfAttentionalTransformation"]

HeadLayout = Literal["full", "grouped"]


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

    ``fused_attn`` (as timm's) chooses how attention is computed:
    :func:`torch.nn.functional.scaled_dot_product_attention`, which never builds the
    ``N x N`` matrix (on CPU, PyTorch falls back to the explicit formula when attention
    dropout is active, i.e. in training with ``attn_drop > 0``), or the explicit
    ``softmax(Q K^T / sqrt(d)) V``, which ``return_weights=True`` always uses. The backend
    (:func:`valfusion.layers.set_backend`) chooses the implementation of the rest: the
    fused one runs the q/k/v maps of all heads as one batched GEMM written straight into
    the layout the attention kernel reads, on token-major memory, and its output keeps the
    input's memory format (``channels_last`` in, ``channels_last`` out).

    Token input (ViT / CLIP patch tokens): ``x`` may be ``(B, N, C)`` with
    ``grid_size=(H, W)``; the ``num_prefix_tokens`` first tokens (class token, registers)
    pass through unchanged, and attention runs over the ``H * W`` patch tokens exactly as
    over the positions of the map ``(B, C, H, W)`` they form; the output is ``(B, N, C)``.

    Args:
        channels: ``C``; must be divisible by ``num_heads``.
        num_heads: number of heads.
        head_layout: ``"grouped"`` (default; the official graph's, ``num_heads`` times
            cheaper q/k/v maps) or ``"full"``.
        qkv_bias: add a bias to the q/k/v maps.
        attn_drop: dropout probability on the attention matrix (training only).
        proj_norm_layer: normalisation after the output 1x1 conv ``F_proj``.
        proj_act_layer: activation after ``proj_norm_layer``.
        fused_attn: attention by :func:`torch.nn.functional.scaled_dot_product_attention`
            when the weights are not requested, else by the explicit formula (in every
            backend).

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

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C, H, W) -> 3 x (B, heads, N, d)``: ``[q; k; v]_g = W_g x_g + b_g`` per
        channel group ``g`` (one group for the full layout)."""
        positions = x.shape[2] * x.shape[3]
        groups = rearrange(x, "b (g c) y x -> g (b y x) c", g=self.groups)
        qkv = torch.matmul(groups, self.qkv_weight.transpose(1, 2))  # (G, B N, 3 e)
        if self.qkv_bias is not None:
            qkv = qkv + rearrange(self.qkv_bias, "g e -> g 1 e")
        # Within a group the rows are (q|k|v, head of the group, d). n, not b, is given:
        # from zero elements (b = 0) einops could not infer n.
        q, k, v = rearrange(
            qkv, "g (b n) (three h d) -> three b (g h) n d", n=positions, three=3, d=self.head_dim
        )
        return q, k, v

    def forward(
        self,
        x: Tensor,
        *,
        return_weights: bool = False,
        grid_size: GridSize | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Transform a map by self-attention over its positions.

        Args:
            x: the fused map ``X``, shape ``(B, C, H, W)``, or tokens ``(B, N, C)`` with
                ``N = num_prefix_tokens + H * W``.
            return_weights: also return the attention weights (explicit formula).
            grid_size: ``(H, W)`` (or ``H`` for a square grid) of the patch tokens;
                required for tokens, not allowed for a map.
            num_prefix_tokens: tokens before the patches, passed through unchanged.

        Returns:
            ``F_sa``, shape ``(B, C, H, W)`` (``(B, N, C)`` for tokens); with
            ``return_weights=True`` the pair ``(F_sa, weights)``, weights of shape
            ``(B, num_heads, H W, H W)`` over the patch positions, each row a softmax over
            key positions (before dropout). Under :func:`torch.autocast` ``F_sa`` has the
            autocast dtype, as :class:`torch.nn.Conv2d`'s output does.

        Raises:
            ValueError: on a wrong rank, channel count or dtype, a map with ``H = 0`` or
                ``W = 0``, or a bad ``grid_size`` or ``num_prefix_tokens``.
        """
        grid = grid_input(x, "x", self.channels, grid_size, num_prefix_tokens)
        x = check_feature_map(grid.map, "x", self.channels, dtype=weight_dtype(self))
        plan = _kernels.plan(x)
        if plan is not None and not return_weights:
            return grid.output(self_attentional_transformation(self, x, plan))
        q, k, v = self._qkv(x)
        weights = None
        if return_weights or not self.fused_attn:
            weights = ((q * (self.head_dim**-0.5)) @ k.transpose(-2, -1)).softmax(dim=-1)
            heads = self.attn_drop(weights) @ v
        else:
            drop = self.attn_drop.p if self.training else 0.0
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = grid.output(self.proj(rearrange(heads, "b h (y x) d -> b (h d) y x", y=x.shape[2])))
        if return_weights:
            assert weights is not None
            return out, weights
        return out
