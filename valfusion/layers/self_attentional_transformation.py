"""Self-attentional transformation: multi-head self-attention over the positions of a map."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers._inputs import check_feature_map
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

    The fused path calls :func:`torch.nn.functional.scaled_dot_product_attention` and
    never builds the ``N x N`` matrix (on CPU, PyTorch falls back to the explicit formula
    when attention dropout is active, i.e. in training with ``attn_drop > 0``). The
    explicit path is used when ``fused_attn=False`` or the weights are requested.

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
        """``(B, C, H, W) -> 3 x (B, heads, N, d)``, each with unit stride on ``d``."""
        batch = x.shape[0]
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
        q, k, v = rearrange(qkv, "g (b n) (three d) -> three b g n d", b=batch, three=3)
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
            ValueError: on a wrong rank, channel count or dtype.
        """
        check_feature_map(x, "x", self.channels)
        height = x.shape[2]
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
