"""Text-image fusion ``F_c``: tile the text over the grid, concatenate, per-position MLP."""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers import _kernels
from valfusion.layers._inputs import GridSize, check_composer_inputs, grid_input
from valfusion.layers._kernels.token_projection import text_image_fusion
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
    The output keeps the input's memory format (``channels_last`` in, ``channels_last``
    out). The fused backend (:func:`valfusion.layers.set_backend`) runs the first layer as
    one GEMM accumulating onto the text term.

    Token input (ViT / CLIP patch tokens): ``image_features`` may be ``(B, N, C)`` with
    ``grid_size=(H, W)``; the ``num_prefix_tokens`` first tokens (class token, registers)
    pass through unchanged and the ``H * W`` patch tokens are fused exactly as the map
    ``(B, C, H, W)`` they form; the output is ``(B, N, C)`` (prefix tokens need
    ``out_channels == C``).

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

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        *,
        grid_size: GridSize | None = None,
        num_prefix_tokens: int = 0,
    ) -> Tensor:
        """Fuse.

        Args:
            image_features: ``F_r``, shape ``(B, C, H, W)``, or tokens ``(B, N, C)`` with
                ``N = num_prefix_tokens + H * W``.
            text_features: ``t``, shape ``(B, D)``.
            grid_size: ``(H, W)`` (or ``H`` for a square grid) of the patch tokens;
                required for tokens, not allowed for a map.
            num_prefix_tokens: tokens before the patches, passed through unchanged.

        Returns:
            ``X``, shape ``(B, C_out, H, W)`` (``C_out = C`` by default), or ``(B, N,
            C_out)`` for tokens. Under :func:`torch.autocast` it has the autocast dtype,
            as :class:`torch.nn.Conv2d`'s output does.

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, a
                map with ``H = 0`` or ``W = 0``, a bad ``grid_size`` or
                ``num_prefix_tokens``, or prefix tokens with ``out_channels != C``.
        """
        grid = grid_input(
            image_features, "image_features", self.image_channels, grid_size, num_prefix_tokens
        )
        prefix_tokens = 0 if grid.prefix is None else grid.prefix.shape[1]
        if prefix_tokens and self.out_channels != self.image_channels:
            raise ValueError(
                f"num_prefix_tokens: prefix tokens pass through unchanged, which needs "
                f"out_channels == image_channels, got out_channels={self.out_channels}, "
                f"image_channels={self.image_channels}"
            )
        image, text = check_composer_inputs(self, grid.map, text_features)
        plan = _kernels.plan(image)
        if plan is not None:
            return grid.output(text_image_fusion(self, image, text, plan))
        conv = self.fuse.conv
        image_weight, text_weight = conv.weight.split([self.image_channels, self.text_channels], 1)
        # conv([F_r ; tile(t)]) = W_r F_r + tile(W_t t + b)
        text_term = F.linear(text, rearrange(text_weight, "o d 1 1 -> o d"), conv.bias)
        x = pointwise_conv(image, image_weight) + rearrange(text_term, "b c -> b c 1 1")
        x = self.mlp(self.fuse.act(self.fuse.norm(x)))
        return grid.output(x)
