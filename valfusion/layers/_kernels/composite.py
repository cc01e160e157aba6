"""Kernel: the composite transformer as one pass over token-major memory.

Computes ``F_o = w_sa F_proj(MHSA(X)) + w_ja gate(F_ch(mean X)) gate(F_sp(mean_c X)) F_r``
with ``X = F_c([F_r ; tile(t)])``. Reference it must equal:
:meth:`valfusion.layers.CompositeTransformer.forward` (the composition of the three parts).

``F_c`` is one GEMM accumulating onto the broadcast text term (``token_projection.py``),
the q/k/v maps one batched GEMM over the head groups that also yields the gates' pooled
inputs (``grouped_qkv.py``), attention SDPA (no ``N x N`` matrix), and ``F_proj`` one GEMM
accumulating straight into the buffer holding ``w_ja F_ja`` when ``F_proj`` has no norm or
activation (``gated_residual.py``): the joint gate and the mix are never materialised, and
each intermediate gradient is one buffer, with no autograd-side additions.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from valfusion.layers._kernels import Plan, is_channel_major, like_memory_format
from valfusion.layers._kernels.gated_residual import gated_residual, gates
from valfusion.layers._kernels.grouped_qkv import attend
from valfusion.layers._kernels.parts import CompositeParts
from valfusion.layers._kernels.token_projection import fuse_tokens

__all__ = ["composite_transformer"]


def composite_transformer(
    block: CompositeParts, image: Tensor, text: Tensor, plan: Plan
) -> Tensor:
    """``F_o`` of ``block`` for a ``(B, C, H, W)`` map ``image`` and text ``(B, D)``.

    Args:
        block: the layer.
        image: ``F_r``: an NCHW or ``channels_last`` map, or the map view of tokens.
        text: ``t``.
        plan: the layout (NCHW maps from ``plan.per_sample_min_tokens`` positions on are
            read and written in place by per-sample GEMMs; others are transposed once) and
            the GEMM route (``plan.gemm``: BLAS products, or oneDNN 1x1 convolutions) and
            who computes the gated residual's elementwise part (``plan.elementwise``).

    Returns:
        ``F_o`` ``(B, C, H, W)`` in ``image``'s memory layout (token-major for tokens).
    """
    height = image.shape[2]
    reference = rearrange(image, "b c y x -> b (y x) c")
    in_place = plan.per_sample_min_tokens is not None and (
        is_channel_major(reference) and reference.shape[1] >= plan.per_sample_min_tokens
    )
    if not in_place:
        # One transpose of an NCHW input (shared by the fusion GEMM and the gated
        # residual) buys single large GEMMs.
        reference = reference.contiguous()
    onednn = plan.gemm == "onednn"
    fused, reference = fuse_tokens(block.fusion, reference, text, height, onednn=onednn)
    fused = rearrange(fused, "b c y x -> b (y x) c")
    # One pass over X for the attention and the gates' pooled inputs: X has a single
    # consumer, whose backward accumulates all of dX in one buffer.
    heads, channel_mean, spatial_mean = attend(
        block.self_attention, fused, pool=True, onednn=onednn
    )
    assert channel_mean is not None and spatial_mean is not None
    channel_gate, spatial_gate = gates(
        block.preservation, channel_mean, rearrange(spatial_mean, "b (y x) -> b 1 y x", y=height)
    )
    channel_gate = block.w_ja * channel_gate
    proj = block.self_attention.proj
    if all(isinstance(m, nn.Identity) for m in (proj.pad, proj.norm, proj.act)):
        # w_sa F_proj(heads) = heads (w_sa W)^T + w_sa b: accumulated by the GEMM into
        # the buffer of w_ja F_ja.
        weight = block.w_sa * rearrange(proj.conv.weight, "o i 1 1 -> o i")
        bias = None if proj.conv.bias is None else block.w_sa * proj.conv.bias
        out = gated_residual(
            reference, channel_gate, spatial_gate, heads, weight, bias,
            onednn=onednn, elementwise=plan.elementwise,
        )
    else:
        transformed = proj(rearrange(heads, "b (y x) c -> b c y x", y=height))
        out = gated_residual(
            reference, channel_gate, spatial_gate, elementwise=plan.elementwise
        ) + block.w_sa * rearrange(transformed, "b c y x -> b (y x) c")
    return like_memory_format(rearrange(out, "b (y x) c -> b c y x", y=height), image)
