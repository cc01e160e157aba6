"""Text-image fusion ``F_c``: tile the text over the grid, concatenate, per-position MLP."""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers._inputs import check_image_text
from valfusion.layers.conv_norm_act import ConvNormAct, LayerFactory, pointwise_conv

__all__ = ["TextImageFusion"]


class TextImageFusion(nn.Module):
    """Fuse a text vector into an image feature map: ``X = F_c([F_r ; tile(t)])``.

    ``F_c`` is an MLP applied at every position, i.e. a stack of ``num_layers`` 1x1
    convolutions, each followed by ``norm_layer`` and ``act_layer``. The first one reads
    the ``C + D`` concatenated channels. With the defaults (one layer, batch norm, ReLU)
    this is the official graph's ``F_c``.

    The tiled text is never materialised: a 1x1 conv over ``[F_r ; tile(t)]`` equals
    ``W_r * F_r + tile(W_t t)``, which saves ``D / (C + D)`` of the first layer's work.
    The weight is still stored as one ``(hidden, C + D, 1, 1)`` conv (image columns first).

    Args:
        image_channels: ``C``.
        text_channels: ``D``.
        hidden_channels: width of the inner layers (``num_layers > 1`` only);
            default ``C``.
        num_layers: number of 1x1 conv layers.
        out_channels: output channels; default ``C``.
        norm_layer: normalisation after each conv (``None`` for none).
        act_layer: activation after each normalisation (``None`` for none).

    Raises:
        ValueError: on a non-positive size, or ``hidden_channels`` with ``num_layers == 1``.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        hidden_channels: int | None = None,
        num_layers: int = 1,
        *,
        out_channels: int | None = None,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        check_positive_int(num_layers, "num_layers")
        if hidden_channels is not None:
            check_positive_int(hidden_channels, "hidden_channels")
            if num_layers == 1:
                raise ValueError(
                    "hidden_channels: only used with num_layers > 1, got "
                    f"hidden_channels={hidden_channels} with num_layers=1"
                )
        out_channels = image_channels if out_channels is None else out_channels
        self.out_channels = check_positive_int(out_channels, "out_channels")
        hidden = image_channels if hidden_channels is None else hidden_channels
        widths = [image_channels + text_channels] + [hidden] * (num_layers - 1) + [out_channels]
        layers = [
            ConvNormAct(c_in, c_out, 1, norm_layer=norm_layer, act_layer=act_layer)
            for c_in, c_out in itertools.pairwise(widths)
        ]
        self.fuse = layers[0]
        self.mlp = nn.Sequential(*layers[1:])

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """Fuse.

        Args:
            image_features: ``F_r``, shape ``(B, C, H, W)``.
            text_features: ``t``, shape ``(B, D)``.

        Returns:
            ``X``, shape ``(B, C_out, H, W)`` (``C_out = C`` by default).

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size.
        """
        check_image_text(image_features, text_features, self.image_channels, self.text_channels)
        conv = self.fuse.conv
        image_weight = conv.weight[:, : self.image_channels]
        text_weight = conv.weight[:, self.image_channels :, 0, 0]
        x = pointwise_conv(image_features, image_weight)
        x = x + rearrange(F.linear(text_features, text_weight, conv.bias), "b c -> b c 1 1")
        x = self.fuse.act(self.fuse.norm(x))
        return self.mlp(x)
