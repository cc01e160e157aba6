"""Which implementation the composite transformer and its parts run: one process-wide switch.

Every layer has two implementations of the same function. Its ``forward`` is the
*reference*: the plain composition of the paper's operations, the code a reader checks
against the method. The *fused* kernels (private, in ``valfusion.layers._kernels``) compute
the same function with hand-written autograd functions that share buffers between the
steps. The switch follows timm's ``set_fused_attn`` / ``TIMM_FUSED_ATTN``: it is read from
the environment variable ``VALFUSION_LAYERS_BACKEND`` when valfusion is imported, and set
from code with :func:`set_backend` or, for a block of code, :func:`use_backend`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, cast, get_args

__all__ = ["BACKEND_ENV_VAR", "Backend", "get_backend", "set_backend", "use_backend"]

Backend = Literal["auto", "fused", "reference"]
"""A backend name: ``"auto"``, ``"fused"`` or ``"reference"``."""

BACKEND_ENV_VAR = "VALFUSION_LAYERS_BACKEND"
"""The environment variable read at import: a backend name (unset or empty: ``"auto"``)."""

_CHOICES: tuple[str, ...] = get_args(Backend)


def _checked(name: object, source: str) -> Backend:
    if name not in _CHOICES:
        raise ValueError(f"{source}: expected one of {_CHOICES}, got {name!r}")
    return cast(Backend, name)


_backend: Backend = _checked(os.environ.get(BACKEND_ENV_VAR) or "auto", BACKEND_ENV_VAR)


def set_backend(name: Backend) -> None:
    """Choose the implementation every composite-transformer layer runs from now on.

    * ``"reference"``: the plain composition of the paper's operations (each layer's
      ``forward``), on every device; what :func:`torch.compile` and :func:`torch.export`
      trace whatever the setting.
    * ``"fused"``: the hand-written kernels (``valfusion.layers._kernels``) on every device,
      in eager mode; each equals the reference up to floating-point rounding.
    * ``"auto"`` (default): per device, what measured fastest: the fused kernels on CPU
      (``benchmarks/results/composite.md``) and on CUDA (token-major layout, not yet
      measured on a GPU), the reference elsewhere. On a CPU in fp32 the kernels' products
      go through the BLAS or through oneDNN, whichever one timed product (once per
      machine, kept in valfusion's cache folder) shows faster by 1.3x;
      ``VALFUSION_CPU_GEMM=blas|onednn`` fixes it.

    Whatever the backend, a layer asked for its attention maps, an empty batch, and code under
    :func:`torch.compile`, :func:`torch.export` or :func:`torch.jit.trace` run the
    reference. ``fused_attn`` on the layers is a separate, per-layer choice: the fused
    :func:`torch.nn.functional.scaled_dot_product_attention` or the explicit softmax
    formula, in either backend.

    Args:
        name: ``"auto"``, ``"fused"`` or ``"reference"``.

    Raises:
        ValueError: on another name.
    """
    global _backend
    _backend = _checked(name, "name")


def get_backend() -> Backend:
    """The backend the layers run now (see :func:`set_backend`).

    Returns:
        ``"auto"``, ``"fused"`` or ``"reference"``.
    """
    return _backend


@contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Run a block of code with another backend, then restore the previous one.

    ``with valfusion.layers.use_backend("reference"): out = block(image, text)``.

    Args:
        name: ``"auto"``, ``"fused"`` or ``"reference"``.

    Raises:
        ValueError: on another name (before the block runs).
    """
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
