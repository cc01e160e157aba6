"""TIRG: text-image residual gating (Vo et al., CVPR 2019), on pooled vectors or on maps."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from valfusion._validation import check_bool, check_positive_int
from valfusion.layers._inputs import check_composer_inputs
from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.conv_norm_act import PointwiseConv2d

__all__ = ["TIRG"]


class TIRG(nn.Module):
    """Gated image feature plus a text-driven residual.

    ``out = w_gate * sigmoid(f_gate([x ; t])) * x + w_res * f_res([x ; t])`` with
    ``f_gate = Linear(ReLU(BN(.)))`` (``C + D -> C``) and
    ``f_res = Linear(ReLU(Linear(ReLU(BN(.)))))`` (``C + D -> hidden -> C``), and learnable
    ``w_gate``, ``w_res`` starting at 1 and 10 as in the authors' code. On a
    ``(B, C, H, W)`` map the same function is applied at every position (the text is
    tiled, the linear maps are 1x1 convs, batch norm pools over batch and positions).

    With ``pool=True`` (the composer ``"tirg_pooled"``) a map is first averaged over its
    positions, ``x = mean_{h,w} F[:, :, h, w]`` ``(B, C)``, as in the TIRG paper and in the
    VAL paper's TIRG baseline; the composed ``(B, C)`` vector is returned broadcast over the
    map's ``H x W`` positions (a view, no copy), so the output keeps the input's shape and
    its spatial mean is the composed vector.

    Args:
        image_channels: ``C``.
        text_channels: ``D``.
        hidden_channels: inner width of ``f_res``; default ``C + D``.
        pool: compose the map's spatial mean instead of every position.

    Raises:
        ValueError: on a non-positive size or a non-boolean ``pool``.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        hidden_channels: int | None = None,
        *,
        pool: bool = False,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        self.pool = check_bool(pool, "pool")
        merged = image_channels + text_channels
        hidden = merged if hidden_channels is None else hidden_channels
        check_positive_int(hidden, "hidden_channels")
        self.gate = nn.Sequential(
            nn.BatchNorm2d(merged), nn.ReLU(), PointwiseConv2d(merged, image_channels)
        )
        self.residual = nn.Sequential(
            nn.BatchNorm2d(merged),
            nn.ReLU(),
            PointwiseConv2d(merged, hidden),
            nn.ReLU(),
            PointwiseConv2d(hidden, image_channels),
        )
        self.w_gate = nn.Parameter(torch.tensor(1.0))
        self.w_res = nn.Parameter(torch.tensor(10.0))

    def extra_repr(self) -> str:
        return f"image_channels={self.image_channels}, text_channels={self.text_channels}, " \
            f"pool={self.pool}"

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention | None]:
        """Compose.

        Args:
            image_features: ``(B, C, H, W)`` map or pooled ``(B, C)`` vector.
            text_features: ``(B, D)``.
            return_attention: return ``(output, None)`` (the composer signature).

        Returns:
            The composed features, same shape as ``image_features`` (with ``pool=True`` and
            a map: the composed vector broadcast over the positions).

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features, allow_pooled=True)
        pooled = image_features.dim() == 2
        if pooled:
            x = rearrange(image_features, "b c -> b c 1 1")
        elif self.pool:
            x = image_features.mean(dim=(2, 3), keepdim=True)
        else:
            x = image_features
        tiled = repeat(text_features, "b d -> b d h w", h=x.shape[2], w=x.shape[3])
        merged = torch.cat([x, tiled], dim=1)
        out = self.w_gate * torch.sigmoid(self.gate(merged)) * x + self.w_res * self.residual(
            merged
        )
        if pooled:
            out = rearrange(out, "b c 1 1 -> b c")
        elif self.pool:
            out = out.expand_as(image_features)
        return (out, None) if return_attention else out
