"""Input checks shared by the composition layers (built on :mod:`valfusion._validation`).

The layers follow :class:`torch.nn.Conv2d` at the edges: a batch of zero samples is
valid (the output is empty too), a map with ``H = 0`` or ``W = 0`` is not (conv2d raises
a ``RuntimeError``; here it is a ``ValueError`` naming the argument). Inputs must have
the dtype of the layer's weights, and the text that of the image, except under
:func:`torch.autocast`, which mixes dtypes on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn

from valfusion._validation import (
    check_dtype,
    check_floating,
    check_ndim,
    check_same_batch,
    check_size,
    fmt_shape,
)

WEIGHTS = "the layer's weights"


def weight_dtype(module: nn.Module | Composer) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (``None`` if it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _autocast_enabled(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return False


def check_map_size(x: Tensor, name: str) -> None:
    """Require ``H >= 1`` and ``W >= 1`` in a ``(B, C, H, W)`` map."""
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(
            f"{name}: expected a non-empty map (H >= 1 and W >= 1), got shape {fmt_shape(x)}"
        )


def check_feature_map(
    x: object, name: str, channels: int, *, dtype: torch.dtype | None = None, dtype_of: str = WEIGHTS
) -> Tensor:
    """Require a floating ``(B, C, H, W)`` map with ``C == channels`` and ``H, W >= 1``, and
    (outside autocast) of ``dtype`` when given, which is the dtype of ``dtype_of``."""
    x = check_ndim(x, name, 4, "(B, C, H, W)")
    check_floating(x, name)
    check_size(x, name, 1, channels, "channels C")
    check_map_size(x, name)
    if dtype is not None and not _autocast_enabled(x):
        check_dtype(x, name, dtype, dtype_of)
    return x


def check_image_text(
    image: object,
    text: object,
    channels: int,
    text_channels: int,
    *,
    dtype: torch.dtype | None = None,
    allow_pooled: bool = False,
    image_name: str = "image_features",
    text_name: str = "text_features",
) -> tuple[Tensor, Tensor]:
    """Check a composer's two inputs: a ``(B, C, H, W)`` map with ``H, W >= 1`` (or
    ``(B, C)`` when ``allow_pooled``) and a ``(B, D)`` text feature with the same batch
    size; outside autocast, the image of ``dtype`` (the weights' dtype, when given) and
    the text of the image's dtype."""
    if allow_pooled and isinstance(image, Tensor) and image.dim() != 4:
        if image.dim() != 2:
            raise ValueError(
                f"{image_name}: expected a 2-D tensor (B, C) or a 4-D tensor (B, C, H, W), "
                f"got shape {fmt_shape(image)}"
            )
    else:
        image = check_ndim(image, image_name, 4, "(B, C, H, W)")
    assert isinstance(image, Tensor)
    check_floating(image, image_name)
    check_size(image, image_name, 1, channels, "channels C")
    if image.dim() == 4:
        check_map_size(image, image_name)
    text = check_ndim(text, text_name, 2, "(B, D)")
    check_floating(text, text_name)
    check_size(text, text_name, 1, text_channels, "text width D")
    check_same_batch(image, image_name, text, text_name)
    if not _autocast_enabled(image):
        if dtype is not None:
            check_dtype(image, image_name, dtype, WEIGHTS)
        check_dtype(text, text_name, image.dtype, image_name)
    return image, text


class Composer(Protocol):
    """What :func:`check_composer_inputs` reads of a composition layer."""

    image_channels: int
    text_channels: int

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def check_composer_inputs(
    composer: Composer, image: object, text: object, *, allow_pooled: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`check_image_text` against a composer's ``image_channels``, ``text_channels``
    and weight dtype (a composer without weights, such as ``ImageOnly``, checks no dtype)."""
    return check_image_text(
        image,
        text,
        composer.image_channels,
        composer.text_channels,
        dtype=weight_dtype(composer),
        allow_pooled=allow_pooled,
    )
