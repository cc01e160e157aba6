"""The feature-pyramid interface: images -> a list of feature maps with known channels."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor, nn

from valfusion._validation import (
    check_floating,
    check_ndim,
    check_positive_int,
    check_size,
    is_positive_int,
)

__all__ = ["FeaturePyramid", "check_images"]


def check_images(images: object, name: str = "images") -> Tensor:
    """Require an RGB image batch ``(B, 3, H, W)`` of floating dtype.

    Args:
        images: The value to check.
        name: The argument name used in the error message.

    Returns:
        ``images``, unchanged.

    Raises:
        ValueError: Naming ``name``, if the rank, channel count or dtype is wrong.
    """
    images = check_ndim(images, name, 4, "(B, 3, H, W)")
    check_size(images, name, 1, 3, "channels")
    return check_floating(images, name)


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        size: tuple[object, ...] = (image_size, image_size)
    elif isinstance(image_size, Sequence):
        size = tuple(image_size)
    else:
        size = ()
    if len(size) == 2:
        height, width = size
        if is_positive_int(height) and is_positive_int(width):
            return height, width
    raise ValueError(
        f"image_size: expected a positive int or a pair (H, W) of them, got {image_size!r}"
    )


class FeaturePyramid(nn.Module, ABC):
    """Base class of image backbones that return ``L`` feature maps, coarsening with depth.

    ``forward(images (B, 3, H, W)) -> [F^1, ..., F^L]`` with ``F^l`` of shape
    ``(B, channels[l], H_l, W_l)`` and ``H_l ≈ H / reductions[l]``. The channel counts
    are known at construction, so composition layers can be built before any image is
    seen. Subclasses call ``super().__init__(channels, reductions)`` and implement
    :meth:`forward_features`; :meth:`forward` validates the images first.

    Args:
        channels: Channels ``C_l`` of each level, in output order.
        reductions: Total stride of each level relative to the input image.

    Raises:
        ValueError: If the two sequences are empty, differ in length or hold
            non-positive values.
    """

    def __init__(self, channels: Sequence[int], reductions: Sequence[int]) -> None:
        super().__init__()
        channels, reductions = tuple(channels), tuple(reductions)
        if not channels or len(channels) != len(reductions):
            raise ValueError(
                f"channels: expected a non-empty sequence as long as reductions "
                f"({len(reductions)}), got {channels!r}"
            )
        for value in channels:
            check_positive_int(value, "channels")
        for value in reductions:
            check_positive_int(value, "reductions")
        self.channels: tuple[int, ...] = channels
        self.reductions: tuple[int, ...] = reductions

    @property
    def num_levels(self) -> int:
        """Number of output maps ``L``."""
        return len(self.channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute the feature maps of a batch of images.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point.

        Returns:
            ``L`` maps, the ``l``-th of shape ``(B, channels[l], H_l, W_l)`` with
            ``(H_l, W_l) = feature_sizes((H, W))[l]``.

        Raises:
            ValueError: If ``images`` has the wrong rank, channel count or dtype.
        """
        return self.forward_features(check_images(images))

    @abstractmethod
    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Backbone computation behind :meth:`forward`; trusts its input.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point.

        Returns:
            ``L`` maps ``(B, channels[l], H_l, W_l)``.
        """

    def feature_sizes(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """Spatial size of every level for an input of ``image_size``.

        The default is ``(ceil(H / r_l), ceil(W / r_l))``, exact for backbones whose
        strided layers pad like ResNet's (``k // 2``); subclasses override it otherwise.

        Args:
            image_size: ``H`` for square images, or ``(H, W)``.

        Returns:
            ``[(H_1, W_1), ..., (H_L, W_L)]``.

        Raises:
            ValueError: If ``image_size`` is not a positive int or pair of them.
        """
        height, width = _image_size(image_size)
        return [(math.ceil(height / r), math.ceil(width / r)) for r in self.reductions]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reductions={self.reductions}"
