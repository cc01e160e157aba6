"""Build a composition layer by name, so models and benchmarks can swap them."""

from __future__ import annotations

from typing import Any

from torch import nn

from valfusion.layers.combiner import Combiner
from valfusion.layers.composite_transformer import CompositeTransformer
from valfusion.layers.concat_fusion import ConcatFusion
from valfusion.layers.tirg import TIRG
from valfusion.layers.unimodal import ImageOnly, TextOnly

__all__ = ["COMPOSERS", "build_composer"]

COMPOSERS: tuple[str, ...] = (
    "val", "val_official", "tirg", "tirg_pooled", "concat", "combiner", "image_only", "text_only"
)
"""Names accepted by :func:`build_composer` (and by ``VALConfig.composer``)."""

_BUILDERS: dict[str, type[nn.Module]] = {
    "val": CompositeTransformer,
    "tirg": TIRG,
    "concat": ConcatFusion,
    "combiner": Combiner,
    "image_only": ImageOnly,
    "text_only": TextOnly,
}


def build_composer(
    name: str,
    image_channels: int,
    text_channels: int,
    *,
    feature_size: int | tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a composer: ``composer(image_features, text_features, *, return_attention=False)``.

    ``image_features`` ``(B, C, H, W)`` (``"tirg"``, ``"tirg_pooled"``, ``"concat"``,
    ``"combiner"``, ``"image_only"`` and ``"text_only"`` also take pooled ``(B, C)``) and ``text_features``
    ``(B, D)`` give an output of ``image_features``' shape.

    Args:
        name: one of :data:`COMPOSERS`: ``"val"`` (:class:`CompositeTransformer`, paper
            configuration), ``"val_official"`` (:meth:`CompositeTransformer.official`),
            ``"tirg"`` (:class:`TIRG` at every position of the map), ``"tirg_pooled"``
            (:class:`TIRG` with ``pool=True``: on the map's spatial mean, the papers'
            setting), ``"concat"``, ``"combiner"`` (:class:`Combiner`, CLIP4Cir's, on the
            map's spatial mean), ``"image_only"``, ``"text_only"``.
        image_channels: ``C``.
        text_channels: ``D``.
        feature_size: ``(H, W)`` of the feature map; required by ``"val_official"``
            (its spatial kernel is the whole map) and ignored by the others, which work at
            any size.
        **kwargs: constructor options of the chosen class (not accepted by
            ``"val_official"``, which is a fixed configuration).

    Returns:
        The composer module.

    Raises:
        ValueError: on an unknown name, or ``"val_official"`` without ``feature_size``.
    """
    if name == "val_official":
        if feature_size is None:
            raise ValueError("feature_size: 'val_official' needs the feature map size (H, W)")
        if kwargs:
            raise ValueError(
                f"kwargs: 'val_official' is a fixed configuration, got options {sorted(kwargs)}"
            )
        return CompositeTransformer.official(image_channels, text_channels, feature_size)
    if name == "tirg_pooled":
        if "pool" in kwargs:
            raise ValueError("kwargs: 'tirg_pooled' always pools; use 'tirg' to choose `pool`")
        return TIRG(image_channels, text_channels, pool=True, **kwargs)
    if name not in _BUILDERS:
        raise ValueError(f"name: expected one of {COMPOSERS}, got {name!r}")
    return _BUILDERS[name](image_channels, text_channels, **kwargs)
