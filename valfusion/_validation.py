"""Input validation shared by the public entry points.

Every check raises :class:`ValueError` with a message that names the argument,
what was expected and what was received, e.g.::

    ValueError: image_features: expected a 4-D tensor (B, C, H, W), got shape (2, 64, 8)

Internals trust their inputs; only public ``forward``/functions call these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeGuard

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_dtype",
    "check_floating",
    "check_int_tensor",
    "check_ndim",
    "check_non_negative_number",
    "check_positive_int",
    "check_positive_number",
    "check_same_batch",
    "check_size",
    "check_texts",
    "check_tokens",
    "fmt_shape",
    "is_positive_int",
]


def fmt_shape(x: Tensor | Sequence[int]) -> str:
    """Format a tensor's shape (or a shape) as ``(2, 3, 4)``."""
    shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(x)
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(s) for s in shape) + ")"


def is_positive_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a Python int ``>= 1`` (``bool`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_ndim(x: object, name: str, ndim: int, layout: str) -> Tensor:
    """Require ``x`` to be a tensor with ``ndim`` dimensions; ``layout`` is e.g. ``"(B, C, H, W)"``."""
    x = _check_tensor(x, name)
    if x.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor {layout}, got shape {fmt_shape(x)}"
        )
    return x


def check_floating(x: Tensor, name: str) -> Tensor:
    """Require a floating-point tensor (integer or bool tensors are a common mistake)."""
    if not torch.is_floating_point(x):
        raise ValueError(
            f"{name}: expected a floating-point tensor, got dtype {x.dtype} "
            f"with shape {fmt_shape(x)}"
        )
    return x


def check_dtype(x: Tensor, name: str, expected: torch.dtype, source: str) -> Tensor:
    """Require ``x.dtype == expected``; ``source`` says where ``expected`` comes from.

    ``source`` completes "the dtype of ...", e.g. ``"the layer's weights"`` or
    ``"image_features"``.
    """
    if x.dtype != expected:
        raise ValueError(
            f"{name}: expected dtype {expected} (the dtype of {source}), got {x.dtype} "
            f"with shape {fmt_shape(x)}; convert one of them with .to(), or run under "
            "torch.autocast"
        )
    return x


def check_int_tensor(x: object, name: str) -> Tensor:
    """Require an integer tensor (token ids, lengths, indices)."""
    x = _check_tensor(x, name)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(
            f"{name}: expected an integer tensor, got dtype {x.dtype} with shape {fmt_shape(x)}"
        )
    return x


def check_size(x: Tensor, name: str, dim: int, expected: int, what: str) -> None:
    """Require ``x.shape[dim] == expected``; ``what`` names the dimension (e.g. ``"channels C"``)."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name}: expected {what} = {expected} (dim {dim}), got {x.shape[dim]} "
            f"in shape {fmt_shape(x)}"
        )


def check_same_batch(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    """Require the same batch size (dim 0) in two tensors."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{b_name}: batch size {b.shape[0]} (shape {fmt_shape(b)}) does not match "
            f"{a_name} batch size {a.shape[0]} (shape {fmt_shape(a)})"
        )


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Require ``value`` to be one of ``choices`` (a mode, a registered name)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_bool(value: object, name: str) -> bool:
    """Require ``True`` or ``False`` (a flag; ``0``/``1`` and other truthy values are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def check_texts(texts: object) -> list[str]:
    """Require ``texts``, a batch of strings: a non-empty iterable of ``str`` (not a bare
    ``str``, which would be a batch of characters); returns it as a list."""
    if isinstance(texts, str):
        raise ValueError(
            "texts: expected a sequence of strings, got a single str; wrap it in a list"
        )
    if not isinstance(texts, Iterable):
        raise ValueError(f"texts: expected a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts: expected at least one text, got an empty sequence")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"texts: expected strings, got {type(text).__name__} at position {index}"
            )
    return texts


def check_positive_int(value: object, name: str) -> int:
    """Require a positive Python int (constructor arguments)."""
    if not is_positive_int(value):
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _is_finite_number(value: object) -> TypeGuard[int | float]:
    # bool is an int subclass, but True as a margin or weight is a mistake, not 1.0.
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


def check_non_negative_number(value: object, name: str) -> float:
    """Require a finite Python number ``>= 0`` (a margin, a loss weight); returns it as float."""
    if not _is_finite_number(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")
    return float(value)


def check_positive_number(value: object, name: str) -> float:
    """Require a finite Python number ``> 0`` (a temperature); returns it as float."""
    if not _is_finite_number(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_tokens(
    tokens: object,
    lengths: object,
    vocab_size: int,
    tokens_name: str = "tokens",
    lengths_name: str = "lengths",
) -> tuple[Tensor, Tensor]:
    """Require padded token ids ``(B, T)`` in ``[0, vocab_size)`` with ``B, T >= 1`` and
    integer lengths ``(B,)`` in ``[1, T]``.

    Reads the values (``min``/``max``), so tensors on a device synchronise with the host.
    """
    tokens = check_ndim(check_int_tensor(tokens, tokens_name), tokens_name, 2, "(B, T)")
    lengths = check_ndim(check_int_tensor(lengths, lengths_name), lengths_name, 1, "(B,)")
    check_same_batch(tokens, tokens_name, lengths, lengths_name)
    steps = tokens.shape[1]
    if tokens.shape[0] == 0 or steps == 0:
        raise ValueError(
            f"{tokens_name}: expected at least one row and one step (B, T), got shape "
            f"{fmt_shape(tokens)}"
        )
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{tokens_name}: expected ids in [0, vocab_size={vocab_size}), got "
            f"values in [{low}, {high}] in shape {fmt_shape(tokens)}"
        )
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > steps:
        raise ValueError(
            f"{lengths_name}: expected values in [1, T={steps}] for {tokens_name} of shape "
            f"{fmt_shape(tokens)}, got values in [{low}, {high}]"
        )
    return tokens, lengths
