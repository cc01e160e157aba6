"""Input checks shared by the composition layers (built on :mod:`valfusion._validation`)."""

from __future__ import annotations

from torch import Tensor

from valfusion._validation import (
    check_floating,
    check_ndim,
    check_same_batch,
    check_size,
    fmt_shape,
)


def check_feature_map(x: object, name: str, channels: int) -> Tensor:
    """Require a floating ``(B, C, H, W)`` map with ``C == channels``."""
    x = check_ndim(x, name, 4, "(B, C, H, W)")
    check_floating(x, name)
    check_size(x, name, 1, channels, "channels C")
    return x


def check_image_text(
    image: object,
    text: object,
    channels: int,
    text_channels: int,
    *,
    allow_pooled: bool = False,
    image_name: str = "image_features",
    text_name: str = "text_features",
) -> tuple[Tensor, Tensor]:
    """Check a composer's two inputs: a ``(B, C, H, W)`` map (or ``(B, C)`` when
    ``allow_pooled``) and a ``(B, D)`` text feature with the same batch size."""
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
    text = check_ndim(text, text_name, 2, "(B, D)")
    check_floating(text, text_name)
    check_size(text, text_name, 1, text_channels, "text width D")
    check_same_batch(image, image_name, text, text_name)
    return image, text
