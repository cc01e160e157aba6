"""Concatenation baseline: concatenate image and tiled text, then a two-layer per-position MLP."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers._inputs import check_composer_inputs
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.conv_norm_act import LayerFactory, PointwiseConv2d
from valfusion.layers.text_image_fusion import TextImageFusion

__all__ = ["ConcatFusion"]


class ConcatFusion(nn.Module):
    """``out = W_2 act(norm(W_1 [x ; tile(t)]))``, per position on maps.

    ``W_1`` is a 1x1 conv ``C + D -> hidden`` and ``W_2`` a 1x1 conv ``hidden -> C`` with
    bias (no normalisation or activation on the output).

    Args:
        image_channels: ``C``.
        text_channels: ``D``.
        hidden_channels: width of the hidden layer; default ``C + D``.
        norm_layer: normalisation of the hidden layer (``None`` for none).
        act_layer: activation of the hidden layer.

    Raises:
        ValueError: on a non-positive size.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        hidden_channels: int | None = None,
        *,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        hidden = image_channels + text_channels if hidden_channels is None else hidden_channels
        check_positive_int(hidden, "hidden_channels")
        self.hidden = TextImageFusion(
            image_channels,
            text_channels,
            out_channels=hidden,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.out = PointwiseConv2d(hidden, image_channels)

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention | None]:
        """Compose.

        Args:
            image_features: ``(B, C, H, W)`` map or pooled ``(B, C)`` vector.
            text_features: ``(B, D)``.
            return_attention: return ``(output, None)`` (the composer signature).

        Returns:
            The composed features, same shape as ``image_features``.

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features, allow_pooled=True)
        pooled = image_features.dim() == 2
        x = rearrange(image_features, "b c -> b c 1 1") if pooled else image_features
        out = self.out(self.hidden(x, text_features))
        if pooled:
            out = rearrange(out, "b c 1 1 -> b c")
        return (out, None) if return_attention else out
