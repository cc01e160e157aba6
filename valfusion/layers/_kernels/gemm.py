"""Kernel helper: a token-major linear map and its two gradients through oneDNN's 1x1 convolution.

For ``x`` ``(B, N, K)`` in contiguous (token-major) memory and a weight ``W`` ``(O, K / G)``
split into ``G`` groups (``G = 1``: a plain linear map)::

    y[b, n, g O/G + o] = sum_k x[b, n, g K/G + k] W[g O/G + o, k] (+ bias[g O/G + o])
    dx[b, n, g K/G + k] = sum_o dy[b, n, g O/G + o] W[g O/G + o, k]
    dW[g O/G + o, k]    = sum_{b, n} dy[b, n, g O/G + o] x[b, n, g K/G + k]

The same numbers are a 1x1 convolution (``groups=G``) of the ``channels_last`` map
``(B, K, N, 1)`` whose memory *is* ``x``: no copy in or out. On x86 CPUs PyTorch runs such a
convolution with oneDNN (from a batch of 16, or with more than one thread: PyTorch's
``use_mkldnn`` rule for 1x1 convolutions); matrix products go to the BLAS (MKL in the x86
wheels). The weight gradient stays a BLAS product (see :func:`linear_backward`). Which is faster
depends on the CPU (``benchmarks/results/cpu_gemm_paths.md``: oneDNN twice MKL's rate on an
AMD EPYC with AVX-512, 0.8 of it on one with AVX2), so the kernels take this route only
when their :class:`~valfusion.layers._kernels.Plan` says ``gemm="onednn"``.

References it must equal: ``x @ W^T + b`` per group (``torch.nn.functional.linear``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["linear", "linear_backward", "token_maps"]


def token_maps(tokens: Tensor) -> Tensor:
    """``tokens`` ``(B, N, K)`` (contiguous) as the ``channels_last`` map ``(B, K, N, 1)``
    with the same memory (a view)."""
    return rearrange(tokens, "b n k -> b k n 1")


def _kernel(weight: Tensor) -> Tensor:
    return rearrange(weight, "o k -> o k 1 1")


def linear(tokens: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """``y = x W^T (+ b)`` per channel group, as one 1x1 convolution.

    Args:
        tokens: ``x``, ``(B, N, K)``, contiguous.
        weight: ``W``, ``(O, K / groups)``.
        bias: ``b``, ``(O,)``, or ``None``.
        groups: ``G``: output group ``g`` reads input group ``g`` only.

    Returns:
        ``y``, ``(B, N, O)``, contiguous.
    """
    out = F.conv2d(token_maps(tokens), _kernel(weight), bias, groups=groups)
    return rearrange(out.contiguous(memory_format=torch.channels_last), "b o n 1 -> b n o")


def linear_backward(
    grad: Tensor,
    tokens: Tensor,
    weight: Tensor,
    groups: int = 1,
    *,
    need_input: bool = True,
    need_weight: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """The input and weight gradients of :func:`linear`.

    ``dx`` is itself a linear map of ``dy`` (by ``W_g^T`` per group), so it is one oneDNN 1x1
    convolution like the forward. ``dW`` is a reduction over the ``B N`` tokens, which
    oneDNN's ``convolution_backward`` computes per image: on an AVX2 EPYC it ran a
    ``2048^3`` weight gradient at 23 GFLOP/s against 89 for ``torch.mm``
    (``benchmarks/results/cpu_gemm_paths.md``), so ``dW`` is one BLAS product per group.

    Args:
        grad: ``dy``, ``(B, N, O)``, contiguous.
        tokens: ``x``, ``(B, N, K)``, contiguous.
        weight: ``W``, ``(O, K / groups)``.
        groups: ``G``.
        need_input: compute ``dx``.
        need_weight: compute ``dW``.

    Returns:
        ``(dx (B, N, K) contiguous, dW (O, K / groups))``, ``None`` where not needed.
    """
    grad_tokens = grad_weight = None
    if need_input:  # dx_g = dy_g W_g: a linear map by W_g^T, stacked over the groups
        transposed = rearrange(weight, "(g o) k -> (g k) o", g=groups)
        grad_tokens = linear(grad, transposed.contiguous(), groups=groups)
    if need_weight:  # dW_g = dy_g^T x_g, summed over the B N tokens
        grad_groups = rearrange(grad, "b n (g o) -> g o (b n)", g=groups)
        token_groups = rearrange(tokens, "b n (g k) -> g (b n) k", g=groups)
        grad_weight = rearrange(torch.bmm(grad_groups, token_groups), "g o k -> (g o) k")
    return grad_tokens, grad_weight
