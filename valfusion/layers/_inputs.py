"""Input checks shared by the composition layers (built on :mod:`valfusion._validation`).

The layers follow :class:`torch.nn.Conv2d` at the edges: a batch of zero samples is
valid (the output is empty too), a map with ``H = 0`` or ``W = 0`` is not (conv2d raises
a ``RuntimeError``; here it is a ``ValueError`` naming the argument). Inputs must have
the dtype of the layer's weights, and the text that of the image, except under
:func:`torch.autocast`, which mixes dtypes on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from einops import rearrange
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

GridSize = int | tuple[int, int]
"""``H`` (a square grid) or ``(H, W)``: the patch grid of a token sequence."""


@dataclass(frozen=True)
class GridInput:
    """A layer input as a ``(B, C, H, W)`` map, and how to give the output back in its form.

    Attributes:
        map: the map itself, or for a token sequence ``(B, N, C)`` the map view of its
            ``H * W`` patch tokens (no copy).
        prefix: for a token sequence, its first ``num_prefix_tokens`` tokens ``(B, P, C)``
            (class token, registers); ``None`` for a map.
    """

    map: Tensor
    prefix: Tensor | None

    @property
    def is_tokens(self) -> bool:
        """Whether the input was a token sequence."""
        return self.prefix is not None

    def output(self, out: Tensor) -> Tensor:
        """``out`` ``(B, C, H, W)`` in the input's form: the map itself, or the tokens
        ``[prefix ; patches]`` ``(B, P + H W, C)``, the prefix passed through unchanged
        (cast to ``out``'s dtype, which differs from it only under autocast)."""
        if self.prefix is None:
            return out
        patches = rearrange(out, "b c y x -> b (y x) c")
        if self.prefix.shape[1] == 0:
            return patches
        return torch.cat([self.prefix.to(patches.dtype), patches], dim=1)


def _grid(grid_size: object) -> tuple[int, int]:
    sides = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if (
        not isinstance(sides, tuple | list)
        or len(sides) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sides)
    ):
        raise ValueError(
            f"grid_size: expected a positive int H or a pair (H, W) of positive ints, "
            f"got {grid_size!r}"
        )
    return sides[0], sides[1]


def grid_input(
    x: object,
    name: str,
    channels: int,
    grid_size: object = None,
    num_prefix_tokens: object = 0,
) -> GridInput:
    """Accept a ``(B, C, H, W)`` map, or a ``(B, N, C)`` token sequence with ``grid_size``.

    For tokens: ``N = num_prefix_tokens + H * W``, the prefix tokens first (timm's layout:
    class token, registers), then the patches in row-major ``(y, x)`` order. Checks the
    token-specific parts (rank, channels, grid); the map checks follow on ``.map``.

    Raises:
        ValueError: naming ``name`` for a 3-D ``x`` without ``grid_size`` (a map of the
            wrong rank, or tokens missing their grid: the message offers both), or with
            the wrong channel count; naming ``grid_size`` when it is given for a map,
            malformed, or when ``N - num_prefix_tokens != H * W``; naming
            ``num_prefix_tokens`` when it is not an int ``>= 0`` or given for a map.
    """
    if (
        not isinstance(num_prefix_tokens, int)
        or isinstance(num_prefix_tokens, bool)
        or num_prefix_tokens < 0
    ):
        raise ValueError(
            f"num_prefix_tokens: expected an int >= 0, got {num_prefix_tokens!r}"
        )
    if not (isinstance(x, Tensor) and x.dim() == 3):
        if grid_size is not None or num_prefix_tokens:
            got = f"shape {fmt_shape(x)}" if isinstance(x, Tensor) else type(x).__name__
            what = "grid_size" if grid_size is not None else "num_prefix_tokens"
            raise ValueError(
                f"{what}: only for a token sequence (B, N, C); {name} is not one ({got})"
            )
        return GridInput(x, None)  # type: ignore[arg-type]  # the map checks follow
    if grid_size is None:
        raise ValueError(
            f"{name}: expected a 4-D tensor (B, C, H, W), or a token sequence (B, N, C) "
            f"with grid_size=(H, W); got shape {fmt_shape(x)} without grid_size"
        )
    check_floating(x, name)
    check_size(x, name, 2, channels, "channels C")
    height, width = _grid(grid_size)
    patches = x.shape[1] - num_prefix_tokens
    if patches != height * width:
        raise ValueError(
            f"grid_size: expected H * W = N - num_prefix_tokens = {x.shape[1]} - "
            f"{num_prefix_tokens} = {patches} patch tokens, got grid_size="
            f"{(height, width)} ({height * width}) for {name} of shape {fmt_shape(x)}"
        )
    patch_map = rearrange(x[:, num_prefix_tokens:], "b (y x) c -> b c y x", y=height)
    return GridInput(patch_map, x[:, :num_prefix_tokens])


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
