"""Single-modality baselines: what a composer scores when it ignores one of its inputs."""

from __future__ import annotations

from einops import repeat
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers._inputs import check_composer_inputs
from valfusion.layers.composite_attention import CompositeAttention

__all__ = ["ImageOnly", "TextOnly"]


class ImageOnly(nn.Module):
    """``out = x``: ignore the text (the reference image alone as the query).

    Args:
        image_channels: ``C``.
        text_channels: ``D`` (checked, then ignored).

    Raises:
        ValueError: on a non-positive size.
    """

    def __init__(self, image_channels: int, text_channels: int) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention | None]:
        """Return the image features unchanged.

        Args:
            image_features: ``(B, C, H, W)`` map or pooled ``(B, C)`` vector.
            text_features: ``(B, D)``.
            return_attention: return ``(output, None)`` (the composer signature).

        Returns:
            ``image_features`` itself.

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features, allow_pooled=True)
        return (image_features, None) if return_attention else image_features


class TextOnly(nn.Module):
    """``out = tile(W t + b)``: ignore the image (the text alone as the query).

    Args:
        image_channels: ``C``, the output width.
        text_channels: ``D``.

    Raises:
        ValueError: on a non-positive size.
    """

    def __init__(self, image_channels: int, text_channels: int) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        self.proj = nn.Linear(text_channels, image_channels)

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention | None]:
        """Project the text to ``C`` channels and tile it over the image's grid.

        Args:
            image_features: ``(B, C, H, W)`` map or pooled ``(B, C)`` vector (only its
                shape is used).
            text_features: ``(B, D)``.
            return_attention: return ``(output, None)`` (the composer signature).

        Returns:
            Same shape as ``image_features``.

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features, allow_pooled=True)
        out = self.proj(text_features)
        if image_features.dim() == 4:
            height, width = image_features.shape[2:]
            # A real tensor, not a stride-0 view, so callers may modify it in place.
            out = repeat(out, "b c -> b c h w", h=height, w=width).contiguous()
        return (out, None) if return_attention else out
