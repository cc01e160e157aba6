"""Kernel helper: a token-major linear map and its two gradients through oneDNN's 1x1 convolution.

For ``x`` ``(B, N, K)`` in contiguous (token-major) memory and a weight ``W`` ``(O, K / G)``
split into ``G`` groups (``G = 1``: a plain linear map)::

    y[b, n, g O/G + o] = sum_k x[b, n, g K/G + k] W[g O/G + o, k] (+ bias[g O/G + o])
    dx[b, n, g K/G + k] = sum_o dy[b, n, g O/G + o] W[g O/G + o, k]
    dW[g O/G + o, k]    = sum_{b, n} dy[b, n, g O/G + o] x[b, n, g K/G + k]

The same numbers are a 1x1 convolution (``groups=G``) of the ``channels_last`` map
``(B, K, N, 1)`` whose memory *is* ``x``: no copy in or out. On x86 CPUs PyTorch runs such a
convolution (batch above one) with oneDNN, and :func:`torch.ops.aten.convolution_backward`
its two gradients; matrix products go to the BLAS (MKL in the x86 wheels). Which is faster
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
    """The input and weight gradients of :func:`linear`, in one oneDNN call.

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
    if not (need_input or need_weight):
        return None, None
    grad_maps, grad_kernel, _ = torch.ops.aten.convolution_backward(
        token_maps(grad),
        token_maps(tokens),
        _kernel(weight),
        None,
        [1, 1],
        [0, 0],
        [1, 1],
        False,
        [0, 0],
        groups,
        [need_input, need_weight, False],
    )
    grad_tokens = None
    if need_input:
        grad_maps = grad_maps.contiguous(memory_format=torch.channels_last)
        grad_tokens = rearrange(grad_maps, "b k n 1 -> b n k")
    grad_weight = None if not need_weight else rearrange(grad_kernel, "o k 1 1 -> o k")
    return grad_tokens, grad_weight
