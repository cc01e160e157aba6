"""REFERENCE implementations of VAL's composite transformer, for the benchmarks only.

These are *not* part of valfusion (the package never imports this module). They restate the
two structures people would otherwise run, so that ``bench_composite`` and
``bench_train_step`` can time valfusion's layers against them on equal terms:

1. **Official-graph structure** (:class:`OfficialGraphComposite`): the structure of the
   authors' TensorFlow graph, written in PyTorch. The text is tiled over the grid and
   concatenated with the image features before one ``(C + D) -> C`` 1x1 conv; the channels
   are split into heads and each head projects its own slice with three separate 1x1 convs
   (query, key, value); each head builds its explicit ``N x N`` attention matrix (matmul,
   scale, softmax, dropout, matmul) inside a Python loop; the gates and the mix are
   separate elementwise ops.
2. **nn.MultiheadAttention port** (:class:`MultiheadAttentionPortComposite`): the
   structure of a public PyTorch port: the same tiled-concat fusion and gates, and the
   self-attention through :class:`torch.nn.MultiheadAttention` on the ``(N, B, C)``
   layout, i.e. *full* ``C -> C`` query/key/value projections and the module's default
   call (``need_weights=True``, so the attention matrix is explicit). A grouped head layout
   is expressed exactly by block-diagonal projection weights (twice the q/k/v work of the
   grouped layout, which is what the port pays).

Both are built from a :class:`valfusion.layers.CompositeTransformer` (or its parts) with
``from_layer``, which copies every weight and buffer, so a reference computes the same
function as the layer it was built from (``tests/test_references.py`` checks this). They
support the configurations the layer supports with one fusion layer: both head layouts, q/k/v
bias, attention dropout, norm/activation after ``F_c`` / ``F_proj`` / the gates, any spatial
kernel (TensorFlow "same" padding), and the mixing weights.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from valfusion.layers import (
    CompositeTransformer,
    JointAttentionalPreservation,
    SelfAttentionalTransformation,
    TextImageFusion,
)
from valfusion.layers.conv_norm_act import ConvNormAct

__all__ = [
    "MultiheadAttentionPortComposite",
    "MultiheadAttentionPortSelfAttention",
    "OfficialGraphComposite",
    "OfficialGraphFusion",
    "OfficialGraphPreservation",
    "OfficialGraphSelfAttention",
    "official_graph_parts",
]


def _copy_conv_norm_act(layer: ConvNormAct) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """``(pad, conv, norm, act)`` as independent modules with ``layer``'s weights and state.

    The conv is a plain :class:`torch.nn.Conv2d` (the library's pointwise convs run some
    shapes as matrix products; the reference keeps the convolution op).
    """
    src = layer.conv
    conv = nn.Conv2d(
        src.in_channels,
        src.out_channels,
        src.kernel_size,
        padding=src.padding,
        bias=src.bias is not None,
        dtype=src.weight.dtype,
        device=src.weight.device,
    )
    conv.load_state_dict(src.state_dict())
    norm = _clone_module(layer.norm)
    act = _clone_module(layer.act)
    pad = _clone_module(layer.pad)
    return pad, conv, norm, act


def _clone_module(module: nn.Module) -> nn.Module:
    """A deep copy (same class, parameters, buffers and training flag)."""
    return copy.deepcopy(module)


class OfficialGraphFusion(nn.Module):
    """REFERENCE: ``X = act(norm(conv_{1x1}(concat[F_r ; tile(t)])))``, the tiled text materialised.

    Args:
        fusion: the :class:`~valfusion.layers.TextImageFusion` (one layer) to copy.

    Shape:
        ``(B, C, H, W), (B, D) -> (B, C, H, W)``.
    """

    def __init__(self, fusion: TextImageFusion) -> None:
        super().__init__()
        if len(fusion.mlp) != 0:
            raise ValueError("fusion: the reference restates one fusion layer (num_layers=1)")
        _, self.conv, self.norm, self.act = _copy_conv_norm_act(fusion.fuse)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """Tile, concatenate, convolve."""
        height, width = image.shape[2:]
        tiled = text[:, :, None, None].expand(-1, -1, height, width)
        return self.act(self.norm(self.conv(torch.cat([image, tiled], dim=1))))


class OfficialGraphSelfAttention(nn.Module):
    """REFERENCE: channel-split heads, separate q/k/v convs, explicit ``N x N`` per head in a loop.

    Head ``i`` reads channel group ``i`` (grouped layout) or all channels (full layout),
    projects it with three 1x1 convs, and computes
    ``softmax(Q_i K_i^T * d^-1/2) V_i`` with an explicit ``(B, N, N)`` matrix; the head
    outputs are concatenated on channels and go through ``F_proj`` (conv, norm, act).

    Args:
        block: the :class:`~valfusion.layers.SelfAttentionalTransformation` to copy.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, block: SelfAttentionalTransformation) -> None:
        super().__init__()
        self.num_heads = block.num_heads
        self.head_dim = block.head_dim
        self.grouped = block.head_layout == "grouped"
        in_channels = self.head_dim if self.grouped else block.channels
        bias = block.qkv_bias is not None
        factory = {"dtype": block.qkv_weight.dtype, "device": block.qkv_weight.device}
        self.query, self.key, self.value = (
            nn.ModuleList(
                nn.Conv2d(in_channels, self.head_dim, 1, bias=bias, **factory)
                for _ in range(self.num_heads)
            )
            for _ in range(3)
        )
        d = self.head_dim
        with torch.no_grad():
            for i in range(self.num_heads):
                group = i if self.grouped else 0
                offset = 0 if self.grouped else i * d
                stride = d if self.grouped else block.channels
                for j, convs in enumerate((self.query, self.key, self.value)):
                    rows = slice(j * stride + offset, j * stride + offset + d)
                    convs[i].weight.copy_(block.qkv_weight[group, rows, :, None, None])
                    if bias:
                        convs[i].bias.copy_(block.qkv_bias[group, rows])
        self.attn_drop = nn.Dropout(block.attn_drop.p)
        _, self.proj, self.proj_norm, self.proj_act = _copy_conv_norm_act(block.proj)

    def forward(self, x: Tensor) -> Tensor:
        """Loop over heads with explicit attention matrices."""
        batch, _, height, width = x.shape
        d = self.head_dim
        heads = []
        for i in range(self.num_heads):
            xi = x[:, i * d : (i + 1) * d] if self.grouped else x
            q = self.query[i](xi).flatten(2).transpose(1, 2)  # (B, N, d)
            k = self.key[i](xi).flatten(2)  # (B, d, N)
            v = self.value[i](xi).flatten(2).transpose(1, 2)  # (B, N, d)
            scores = torch.bmm(q, k) * (1.0 / math.sqrt(d))  # (B, N, N)
            weights = self.attn_drop(torch.softmax(scores, dim=-1))
            heads.append(torch.bmm(weights, v).transpose(1, 2).reshape(batch, d, height, width))
        return self.proj_act(self.proj_norm(self.proj(torch.cat(heads, dim=1))))


class OfficialGraphPreservation(nn.Module):
    """REFERENCE: the gates and ``F_ja = sigmoid(a_ch) * sigmoid(a_sp) * F_r`` as separate ops.

    Args:
        block: the :class:`~valfusion.layers.JointAttentionalPreservation` to copy.

    Shape:
        ``(B, C, H, W), (B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, block: JointAttentionalPreservation) -> None:
        super().__init__()
        _, self.channel_conv, self.channel_norm, self.channel_act = _copy_conv_norm_act(
            block.channel_conv
        )
        pad, self.spatial_conv, self.spatial_norm, self.spatial_act = _copy_conv_norm_act(
            block.spatial_conv
        )
        self.spatial_pad = pad
        self.gate = _clone_module(block.gate)

    def forward(self, fused: Tensor, reference: Tensor) -> Tensor:
        """Channel gate, spatial gate, their product, times the reference."""
        pooled = fused.mean(dim=(2, 3), keepdim=True)
        a_ch = self.gate(self.channel_act(self.channel_norm(self.channel_conv(pooled))))
        squeezed = self.spatial_pad(fused.mean(dim=1, keepdim=True))
        a_sp = self.gate(self.spatial_act(self.spatial_norm(self.spatial_conv(squeezed))))
        joint = a_ch * a_sp
        return joint * reference


class MultiheadAttentionPortSelfAttention(nn.Module):
    """REFERENCE: self-attention through :class:`torch.nn.MultiheadAttention` on ``(N, B, C)``.

    The module's ``in_proj_weight`` holds full ``C -> C`` maps (block-diagonal copies for
    the grouped layout); its ``out_proj`` is ``F_proj``'s conv, followed by ``F_proj``'s norm
    and activation. Called as public ports call it: ``attention(x, x, x)`` (default
    ``need_weights=True``).

    Args:
        block: the :class:`~valfusion.layers.SelfAttentionalTransformation` to copy.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, block: SelfAttentionalTransformation) -> None:
        super().__init__()
        channels = block.channels
        proj = block.proj
        factory = {"dtype": block.qkv_weight.dtype, "device": block.qkv_weight.device}
        self.attention = nn.MultiheadAttention(
            channels, block.num_heads, dropout=block.attn_drop.p, **factory
        )
        with torch.no_grad():
            weight = torch.zeros(3 * channels, channels, **factory)
            bias = torch.zeros(3 * channels, **factory)
            for j in range(3):
                for g in range(block.groups):
                    width = channels // block.groups
                    rows = slice(j * channels + g * width, j * channels + (g + 1) * width)
                    cols = slice(g * width, (g + 1) * width)
                    src = slice(j * width, (j + 1) * width)
                    weight[rows, cols] = block.qkv_weight[g, src]
                    if block.qkv_bias is not None:
                        bias[rows] = block.qkv_bias[g, src]
            self.attention.in_proj_weight.copy_(weight)
            self.attention.in_proj_bias.copy_(bias)
            self.attention.out_proj.weight.copy_(proj.conv.weight[:, :, 0, 0])
            if proj.conv.bias is not None:
                self.attention.out_proj.bias.copy_(proj.conv.bias)
            else:
                self.attention.out_proj.bias.zero_()
        self.proj_norm = _clone_module(proj.norm)
        self.proj_act = _clone_module(proj.act)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (N, B, C)``, multi-head attention, back, norm and act."""
        batch, channels, height, width = x.shape
        sequence = x.flatten(2).permute(2, 0, 1)  # (N, B, C)
        out, _ = self.attention(sequence, sequence, sequence)
        out = out.permute(1, 2, 0).reshape(batch, channels, height, width)
        return self.proj_act(self.proj_norm(out))


class _ReferenceComposite(nn.Module):
    """``F_o = w_sa * F_sa(X) + w_ja * F_ja(X, F_r)``, ``X = fusion(F_r, t)``, from parts."""

    def __init__(self, layer: CompositeTransformer, self_attention: nn.Module) -> None:
        super().__init__()
        self.fusion = OfficialGraphFusion(layer.fusion)
        self.self_attention = self_attention
        self.preservation = OfficialGraphPreservation(layer.preservation)
        self.w_sa = nn.Parameter(layer.w_sa.detach().clone())
        self.w_ja = nn.Parameter(layer.w_ja.detach().clone())
        self.train(layer.training)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        """``(B, C, H, W), (B, D) -> (B, C, H, W)``."""
        fused = self.fusion(image, text)
        transformed = self.self_attention(fused)
        preserved = self.preservation(fused, image)
        return self.w_sa * transformed + self.w_ja * preserved


class OfficialGraphComposite(_ReferenceComposite):
    """REFERENCE 1: the official graph's structure (see the module docstring).

    Args:
        layer: the :class:`~valfusion.layers.CompositeTransformer` whose weights to copy.

    Shape:
        ``(B, C, H, W), (B, D) -> (B, C, H, W)``.
    """

    def __init__(self, layer: CompositeTransformer) -> None:
        super().__init__(layer, OfficialGraphSelfAttention(layer.self_attention))

    @classmethod
    def from_layer(cls, layer: CompositeTransformer) -> OfficialGraphComposite:
        """The reference computing ``layer``'s function (weights and buffers copied)."""
        return cls(layer)


class MultiheadAttentionPortComposite(_ReferenceComposite):
    """REFERENCE 2: the structure of an ``nn.MultiheadAttention`` port (see the module docstring).

    Args:
        layer: the :class:`~valfusion.layers.CompositeTransformer` whose weights to copy.

    Shape:
        ``(B, C, H, W), (B, D) -> (B, C, H, W)``.
    """

    def __init__(self, layer: CompositeTransformer) -> None:
        super().__init__(layer, MultiheadAttentionPortSelfAttention(layer.self_attention))

    @classmethod
    def from_layer(cls, layer: CompositeTransformer) -> MultiheadAttentionPortComposite:
        """The reference computing ``layer``'s function (weights and buffers copied)."""
        return cls(layer)


def official_graph_parts(
    layer: CompositeTransformer,
) -> tuple[OfficialGraphSelfAttention, OfficialGraphPreservation]:
    """Reference 1's self-attention and preservation parts copied from ``layer``."""
    sa = OfficialGraphSelfAttention(layer.self_attention).train(layer.training)
    ja = OfficialGraphPreservation(layer.preservation).train(layer.training)
    return sa, ja
