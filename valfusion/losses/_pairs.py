"""Checks and preparation shared by the pairwise losses (internal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from valfusion._validation import (
    check_floating,
    check_ndim,
    check_same_batch,
    check_size,
    fmt_shape,
)

# Zero vectors normalise to zero instead of dividing by zero.
NORM_EPS = 1e-12


def check_pair(x: object, x_name: str, y: object, y_name: str) -> tuple[Tensor, Tensor]:
    """Require two floating ``(B, D)`` tensors with the same ``B`` and ``D``."""
    x = check_floating(check_ndim(x, x_name, 2, "(B, D)"), x_name)
    y = check_floating(check_ndim(y, y_name, 2, "(B, D)"), y_name)
    check_same_batch(x, x_name, y, y_name)
    check_size(y, y_name, 1, x.shape[1], f"embedding size D of {x_name}")
    return x, y


def check_has_negatives(count: int, x: Tensor, name: str) -> None:
    """Require at least two pairs among the candidates, so every anchor has a negative."""
    if count < 2:
        raise ValueError(
            f"{name}: a batch of one pair has no negatives; the loss needs at least 2 pairs "
            f"in the batch (gathered over all processes), got {count} (local shape "
            f"{fmt_shape(x)})"
        )


def compute_dtype(*xs: Tensor) -> torch.dtype:
    """fp16/bf16 inputs are computed in fp32 (softmax and squared distances overflow in fp16)."""
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return torch.promote_types(dtype, torch.float32)


def normalize(x: Tensor, dtype: torch.dtype) -> Tensor:
    """L2-normalise the rows of ``x`` in ``dtype``; shape ``(B, D)`` -> ``(B, D)``."""
    return F.normalize(x.to(dtype), dim=1, eps=NORM_EPS)
