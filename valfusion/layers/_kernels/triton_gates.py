"""Triton kernels: the elementwise part of the gated residual, forward and backward in one pass.

Forward: ``out[b, n, c] = r[b, n, c] a[b, c] s[b, n] (+ bias[c])``, written into a given
buffer (:func:`gated_product`); the caller then accumulates ``t W^T`` into it with a GEMM
(``addmm_``, i.e. cuBLAS with ``beta = 1`` on CUDA). Backward (:func:`gated_product_backward`),
one read of ``g = dL/d out`` and ``r``:

* ``grad_r[b, n, c] = g[b, n, c] a[b, c] s[b, n]``,
* ``grad_s[b, n] = sum_c g[b, n, c] r[b, n, c] a[b, c]``,
* ``grad_a[b, c] = sum_n g[b, n, c] r[b, n, c] s[b, n]``,

deterministically (no atomics): one program per ``(b, block of BACKWARD_BLOCK_N tokens)``
loops over the channels, so it sums ``grad_s`` of its tokens whole, and writes the sum of
``grad_a`` over its tokens to a ``(B, n_blocks, C)`` fp32 buffer, summed over the blocks
by torch. Arithmetic is fp32 whatever the input dtype (bf16, fp16, fp32; fp64 inputs are
computed, and their buffer kept, in fp64); outputs have the input dtype.

Tensors: ``r``, ``g`` and the outputs ``(B, N, C)`` with any strides (token-major, or the
token view of an NCHW map; the tiles are shaped for token-major memory, channels
contiguous, the layout of CUDA's plan); ``a`` ``(B, C)``, ``s`` ``(B, N)``, ``bias``
``(C,)``; one dtype and device. One sample may have at most ``2^31`` elements (offsets
inside a sample are 32-bit, the batch offset is 64-bit).

Triton is not a dependency of valfusion: this module imports without it, and imports it on
the first launch (:func:`_build`). :func:`supports` says whether the kernels can run on a
device: CUDA of compute capability 8.0 or newer (Triton's supported NVIDIA GPUs) with triton
importable, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set before
the first launch: the tests run the kernels so). Reference they must equal: the torch
elementwise ops of :class:`~valfusion.layers._kernels.gated_residual._GatedResidual`.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    import triton.language as tl

__all__ = ["gated_product", "gated_product_backward", "supports"]

# Tile sizes: not tuned (not yet measured on a GPU). Forward: 32 tokens x 128 channels per
# program, 4096 elements (32 per thread at Triton's default 4 warps), channels contiguous.
FORWARD_BLOCK_N = 32
FORWARD_BLOCK_C = 128
# Backward: each program owns 16 tokens and loops over the channels 128 at a time; 16
# (not more) so that VAL's smallest level (batch 32, 64 tokens) still has 128 programs,
# about one per SM of an H100, while the fp32 buffer of grad_a's partial sums stays at
# C / 16 floats per token (a sixteenth of the bytes of g and r in bf16).
BACKWARD_BLOCK_N = 16
BACKWARD_BLOCK_C = 128

# Kernel arguments, typed loosely on purpose: Triton reads a parameter's annotation as its
# type (an `int` would force 32 bits), and these names mean nothing to it.
Pointer = Any  # a tensor, passed as the address of its first element
Size = Any  # an int: a size or a stride, in elements


def _gated_product_kernel(
    r_ptr: Pointer, a_ptr: Pointer, s_ptr: Pointer, bias_ptr: Pointer, out_ptr: Pointer,
    N: Size, C: Size,
    stride_rb: Size, stride_rn: Size, stride_rc: Size,
    stride_ob: Size, stride_on: Size, stride_oc: Size,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
) -> None:
    """Program ``(b, i, j)``: ``out = r a s (+ bias)`` on tokens ``i*BLOCK_N + [0, BLOCK_N)``
    and channels ``j*BLOCK_C + [0, BLOCK_C)`` of sample ``b``, in dtype ``ACC``; ``a``, ``s``
    contiguous."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_in, c_in = n < N, c < C
    inside = n_in[:, None] & c_in[None, :]
    r = tl.load(
        r_ptr + b * stride_rb + n[:, None] * stride_rn + c[None, :] * stride_rc,
        mask=inside, other=0.0,
    ).to(ACC)
    a = tl.load(a_ptr + b * C + c, mask=c_in, other=0.0).to(ACC)
    s = tl.load(s_ptr + b * N + n, mask=n_in, other=0.0).to(ACC)
    out = r * a[None, :] * s[:, None]
    if HAS_BIAS:
        out += tl.load(bias_ptr + c, mask=c_in, other=0.0).to(ACC)[None, :]
    tl.store(
        out_ptr + b * stride_ob + n[:, None] * stride_on + c[None, :] * stride_oc,
        out.to(out_ptr.dtype.element_ty), mask=inside,
    )


def _gated_product_backward_kernel(
    g_ptr: Pointer, r_ptr: Pointer, a_ptr: Pointer, s_ptr: Pointer,
    grad_r_ptr: Pointer, grad_s_ptr: Pointer, partial_a_ptr: Pointer,
    N: Size, C: Size, n_blocks: Size,
    stride_gb: Size, stride_gn: Size, stride_gc: Size,
    stride_rb: Size, stride_rn: Size, stride_rc: Size,
    stride_db: Size, stride_dn: Size, stride_dc: Size,
    NEED_R: tl.constexpr, NEED_A: tl.constexpr, NEED_S: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
) -> None:
    """Program ``(b, i)``, tokens ``n = i*BLOCK_N + [0, BLOCK_N)`` of sample ``b``, every
    channel ``BLOCK_C`` at a time: ``grad_r = g a s`` (strides ``stride_d*``), ``grad_s[b, n]
    = sum_c g r a`` and ``partial_a[b, i, c] = sum_n g r s`` (``(B, n_blocks, C)``), in dtype
    ``ACC``; ``a``, ``s``, ``grad_s`` contiguous."""
    b = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_in = n < N
    s = tl.load(s_ptr + b * N + n, mask=n_in, other=0.0).to(ACC)
    grad_s = tl.zeros([BLOCK_N], dtype=ACC)
    for c_start in range(0, C, BLOCK_C):
        c = c_start + tl.arange(0, BLOCK_C)
        c_in = c < C
        inside = n_in[:, None] & c_in[None, :]
        g = tl.load(
            g_ptr + b * stride_gb + n[:, None] * stride_gn + c[None, :] * stride_gc,
            mask=inside, other=0.0,
        ).to(ACC)
        a = tl.load(a_ptr + b * C + c, mask=c_in, other=0.0).to(ACC)
        if NEED_R:
            tl.store(
                grad_r_ptr + b * stride_db + n[:, None] * stride_dn + c[None, :] * stride_dc,
                (g * a[None, :] * s[:, None]).to(grad_r_ptr.dtype.element_ty), mask=inside,
            )
        if NEED_A or NEED_S:
            gr = g * tl.load(
                r_ptr + b * stride_rb + n[:, None] * stride_rn + c[None, :] * stride_rc,
                mask=inside, other=0.0,
            ).to(ACC)
            if NEED_S:
                grad_s += tl.sum(gr * a[None, :], axis=1)
            if NEED_A:
                tl.store(
                    partial_a_ptr + (b * n_blocks + block) * C + c,
                    tl.sum(gr * s[:, None], axis=0), mask=c_in,
                )
    if NEED_S:
        tl.store(grad_s_ptr + b * N + n, grad_s.to(grad_s_ptr.dtype.element_ty), mask=n_in)


@functools.cache
def _build() -> tuple[Any, Any]:
    """The two kernels, JIT-compiled by Triton (interpreted under ``TRITON_INTERPRET=1``)."""
    # The kernels read `tl` from this module's globals, where Triton (and its interpreter,
    # which patches the `triton.language` it finds there) looks for it: bound here, on the
    # first launch, so that importing this module does not import Triton.
    global tl
    import triton
    import triton.language as tl

    return triton.jit(_gated_product_kernel), triton.jit(_gated_product_backward_kernel)


@functools.cache
def _importable() -> bool:
    try:
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _cuda_capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)


def supports(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: triton importable, either a CUDA device of
    compute capability 8.0+ or the CPU under Triton's interpreter (``TRITON_INTERPRET=1``),
    and the kernels, built and run there once on a small case (:func:`_works_on`), equal
    torch's ops."""
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1" and _importable() and _works_on("cpu")
    if device.type == "cuda":
        if not (_importable() and torch.cuda.is_available()):
            return False
        index = torch.cuda.current_device() if device.index is None else device.index
        return _cuda_capable(index) and _works_on(f"cuda:{index}")
    return False


@functools.cache
def _works_on(device: str) -> bool:
    """Build and run both kernels once on ``device`` (``(2, 37, 131)``, fp32: masked edges in
    both tile dimensions) and compare with torch's ops. A failure to build or a wrong result
    (kernels not yet run on every GPU Triton supports) is a warning, once per device, and
    torch's elementwise ops run there instead of an error in a user's training step."""
    try:
        generator = torch.Generator().manual_seed(0)
        r, g = (torch.randn(2, 37, 131, generator=generator).to(device) for _ in range(2))
        a = torch.rand(2, 131, generator=generator).to(device)
        s = torch.rand(2, 37, generator=generator).to(device)
        out = gated_product(r, a, s, None, out=torch.empty_like(r))
        grads = gated_product_backward(g, r, a, s, (True, True, True))
        expected = (
            r * a[:, None, :] * s[:, :, None],
            g * a[:, None, :] * s[:, :, None],
            (g * r * s[:, :, None]).sum(dim=1),
            (g * r * a[:, None, :]).sum(dim=2),
        )
        problem = next(
            (
                name
                for name, got, want in zip(
                    ("product", "grad_r", "grad_a", "grad_s"), (out, *grads), expected,
                    strict=True,
                )
                if got is None or not torch.allclose(got, want, rtol=1e-4, atol=1e-4)
            ),
            None,
        )
    except Exception as error:  # any failure to build or run: fall back
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        return True
    warnings.warn(
        f"valfusion: the Triton gate kernels failed their check on {device} ({problem}); "
        "torch's elementwise ops run there instead",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def gated_product(
    reference: Tensor, channel_gate: Tensor, spatial_gate: Tensor, bias: Tensor | None,
    out: Tensor,
) -> Tensor:
    """``out[b, n, c] = r[b, n, c] a[b, c] s[b, n] (+ bias[c])``, in one pass, fp32 inside
    (fp64 for fp64 inputs).

    Args:
        reference: ``r``, ``(B, N, C)``, any strides.
        channel_gate: ``a``, ``(B, C)``.
        spatial_gate: ``s``, ``(B, N)``.
        bias: ``(C,)`` or ``None``.
        out: ``(B, N, C)``, any strides (not overlapping ``r``), written whole.

    Returns:
        ``out``.
    """
    forward, _ = _build()
    batch, tokens, channels = reference.shape
    grid = (batch, _cdiv(tokens, FORWARD_BLOCK_N), _cdiv(channels, FORWARD_BLOCK_C))
    channel_gate, spatial_gate = channel_gate.contiguous(), spatial_gate.contiguous()
    forward[grid](
        reference, channel_gate, spatial_gate,
        out if bias is None else bias.contiguous(), out,  # no bias: a pointer never read
        tokens, channels, *reference.stride(), *out.stride(),
        HAS_BIAS=bias is not None, ACC=_accumulator(reference.dtype),
        BLOCK_N=FORWARD_BLOCK_N, BLOCK_C=FORWARD_BLOCK_C,
    )
    return out


def gated_product_backward(
    grad: Tensor, reference: Tensor, channel_gate: Tensor, spatial_gate: Tensor,
    need: tuple[bool, bool, bool], grad_reference: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of :func:`gated_product` with respect to ``r``, ``a`` and ``s``.

    ``grad_r = g a s``, ``grad_a[b, c] = sum_n g r s``, ``grad_s[b, n] = sum_c g r a`` in one
    read of ``g`` and ``r`` (``r`` only when ``grad_a`` or ``grad_s`` is needed), summed in
    fp32 (fp64 for fp64 inputs) in a fixed order (deterministic).

    Args:
        grad: ``g``, ``(B, N, C)``, any strides.
        reference: ``r``, ``(B, N, C)``, any strides.
        channel_gate: ``a``, ``(B, C)``.
        spatial_gate: ``s``, ``(B, N)``.
        need: whether ``(grad_r, grad_a, grad_s)`` are wanted; the others are ``None``.
        grad_reference: a ``(B, N, C)`` buffer for ``grad_r`` (it may be ``grad`` itself:
            each element of ``g`` is read before its ``grad_r`` is written, by the same
            program); by default a new one in ``r``'s layout.

    Returns:
        ``(grad_r (B, N, C), grad_a (B, C), grad_s (B, N))`` in ``r``'s dtype, or ``None``
        where not needed.
    """
    need_r, need_a, need_s = need
    if not (need_r or need_a or need_s):
        return None, None, None
    _, backward = _build()
    batch, tokens, channels = reference.shape
    n_blocks = _cdiv(tokens, BACKWARD_BLOCK_N)
    grad_r = None
    if need_r:
        grad_r = torch.empty_like(reference) if grad_reference is None else grad_reference
    grad_s = spatial_gate.new_empty((batch, tokens)) if need_s else None
    partial_a = (
        reference.new_empty((batch, n_blocks, channels), dtype=_accumulated(reference.dtype))
        if need_a else None
    )
    written = grad_r if grad_r is not None else grad  # pointers the kernel never reads
    backward[(batch, n_blocks)](
        grad, reference, channel_gate.contiguous(), spatial_gate.contiguous(),
        written, grad_s if grad_s is not None else spatial_gate,
        partial_a if partial_a is not None else grad,
        tokens, channels, n_blocks, *grad.stride(), *reference.stride(), *written.stride(),
        NEED_R=need_r, NEED_A=need_a, NEED_S=need_s, ACC=_accumulator(reference.dtype),
        BLOCK_N=BACKWARD_BLOCK_N, BLOCK_C=BACKWARD_BLOCK_C,
    )
    grad_a = None if partial_a is None else partial_a.sum(dim=1).to(channel_gate.dtype)
    return grad_r, grad_a, grad_s


def _accumulated(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for inputs of ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _accumulator(dtype: torch.dtype) -> Any:
    """:func:`_accumulated` as a Triton dtype (after :func:`_build`)."""
    return tl.float64 if _accumulated(dtype) == torch.float64 else tl.float32


def _cdiv(size: int, block: int) -> int:
    """The number of blocks of ``block`` covering ``size`` (``triton.cdiv``)."""
    return -(-size // block)
