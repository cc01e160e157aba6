"""CLIP4Cir's Combiner (Baldrati et al., CVPR 2022 / CVPRW 2022): a learned mixture of the
image and text features plus a learned residual, on pooled vectors."""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

from valfusion._validation import check_positive_int
from valfusion.layers._inputs import check_composer_inputs
from valfusion.layers.composite_attention import CompositeAttention

__all__ = ["Combiner"]


class Combiner(nn.Module):
    """Dynamic convex mixture of image and text plus a learned residual.

    For an image vector ``x`` ``(B, C)`` and a text vector ``t`` ``(B, D)``:

    ``p_t = drop(ReLU(W_t t))``, ``p_x = drop(ReLU(W_x x))`` ``(B, P)``;
    ``z = [p_t ; p_x]`` ``(B, 2P)``;
    ``lambda = sigmoid(W_l2 drop(ReLU(W_l1 z)))`` ``(B, 1)``;
    ``out = W_o drop(ReLU(W_h z)) + lambda * R t + (1 - lambda) * x`` ``(B, C)``,

    where ``W_t`` is ``D -> P``, ``W_x`` ``C -> P``, ``W_h`` and ``W_l1`` ``2P -> hidden``,
    ``W_l2`` ``hidden -> 1`` and ``W_o`` ``hidden -> C`` (all linear with bias), and
    ``drop`` is dropout (training only). The defaults follow the authors' code
    (``P = 4C``, ``hidden = 8C``, dropout 0.5: 2560 and 5120 for CLIP RN50x4's 640).

    Differences from CLIP4Cir, where image and text are both CLIP embeddings of one width
    and the output is L2-normalised inside the layer:

    - ``R`` is the identity when ``D == C`` (CLIP4Cir's case) and a bias-free linear map
      ``D -> C`` otherwise, so the text can enter the mixture at the image's width.
    - The output is not normalised here: valfusion's model pools and L2-normalises every
      composer's output (:class:`~valfusion.models.VAL`), which on the pooled vector is
      CLIP4Cir's normalisation.
    - On a ``(B, C, H, W)`` map the Combiner composes the map's spatial mean
      ``x = mean_{h,w} F[:, :, h, w]`` (CLIP4Cir combines global features) and returns the
      ``(B, C)`` result broadcast over the ``H x W`` positions (a view, no copy), so the
      output keeps the input's shape and its spatial mean is the composed vector.

    Args:
        image_channels: ``C``.
        text_channels: ``D``.
        projection_channels: ``P``; default ``4 C``.
        hidden_channels: width of the two hidden layers; default ``8 C``.
        dropout: dropout probability in ``[0, 1)`` after each ReLU.

    Raises:
        ValueError: on a non-positive size or a dropout probability outside ``[0, 1)``.
    """

    def __init__(
        self,
        image_channels: int,
        text_channels: int,
        projection_channels: int | None = None,
        hidden_channels: int | None = None,
        *,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.text_channels = check_positive_int(text_channels, "text_channels")
        projection = 4 * image_channels if projection_channels is None else projection_channels
        hidden = 8 * image_channels if hidden_channels is None else hidden_channels
        check_positive_int(projection, "projection_channels")
        check_positive_int(hidden, "hidden_channels")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
            0.0 <= dropout < 1.0
        ):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.text_projection = nn.Sequential(
            nn.Linear(text_channels, projection), nn.ReLU(), nn.Dropout(dropout)
        )
        self.image_projection = nn.Sequential(
            nn.Linear(image_channels, projection), nn.ReLU(), nn.Dropout(dropout)
        )
        self.residual = nn.Sequential(
            nn.Linear(2 * projection, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, image_channels),
        )
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )
        self.text_to_image: nn.Module = (
            nn.Identity()
            if text_channels == image_channels
            else nn.Linear(text_channels, image_channels, bias=False)
        )

    def extra_repr(self) -> str:
        return f"image_channels={self.image_channels}, text_channels={self.text_channels}"

    def forward(
        self, image_features: Tensor, text_features: Tensor, *, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, CompositeAttention | None]:
        """Compose.

        Args:
            image_features: ``(B, C, H, W)`` map or pooled ``(B, C)`` vector.
            text_features: ``(B, D)``.
            return_attention: return ``(output, None)`` (the composer signature).

        Returns:
            The composed features, same shape as ``image_features`` (for a map: the
            composed vector of its spatial mean, broadcast over the positions).

        Raises:
            ValueError: on a wrong rank, channel count, text width, dtype or batch size, or
                a map with ``H = 0`` or ``W = 0``.
        """
        check_composer_inputs(self, image_features, text_features, allow_pooled=True)
        pooled = image_features.dim() == 2
        x = image_features if pooled else reduce(image_features, "b c h w -> b c", "mean")
        z = torch.cat([self.text_projection(text_features), self.image_projection(x)], dim=-1)
        weight = self.dynamic_scalar(z)
        out = self.residual(z) + weight * self.text_to_image(text_features) + (1 - weight) * x
        if not pooled:
            out = rearrange(out, "b c -> b c 1 1").expand_as(image_features)
        return (out, None) if return_attention else out
