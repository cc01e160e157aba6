"""The image pyramid a :class:`~valfusion.models.VALConfig` names: built from the config, or
a passed module checked against it (so that :meth:`~valfusion.models.VAL.from_pretrained`
can always rebuild what was saved)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from valfusion.encoders import (
    IMAGENET,
    FeaturePyramid,
    SmallConvPyramid,
    TimmPyramid,
    TimmViTPyramid,
    TorchvisionResNetPyramid,
    load_backbone_state_dict,
    resolve_backbone_weights,
)
from valfusion.models.config import VALConfig

__all__ = [
    "RESNET_STAGES",
    "TIMM_OUT_INDICES",
    "build_backbone",
    "check_backbone",
    "initial_weights",
    "timm_backbone_name",
]

#: The torchvision ResNet stages whose outputs are the pyramid's levels.
RESNET_STAGES = (2, 3, 4)
#: The feature levels of a ``"timm:NAME"`` backbone: its last three (strides 8, 16, 32 for
#: most CNNs, like :data:`RESNET_STAGES`).
TIMM_OUT_INDICES = (-3, -2, -1)

Weights = Mapping[str, Tensor] | str | os.PathLike[str] | Path | None


def timm_backbone_name(backbone: str) -> tuple[str, str] | None:
    """Split ``"timm:NAME"`` / ``"timm_vit:NAME"`` into ``(prefix, NAME)``; ``None`` otherwise."""
    prefix, sep, name = backbone.partition(":")
    if sep and prefix in ("timm", "timm_vit"):
        return prefix, name
    return None


def initial_weights(config: VALConfig) -> Mapping[str, Tensor] | str | None:
    """What ``config.backbone_weights`` asks for, checked now: ``None``, ``"imagenet"`` or the
    state dict of the named file (read without running code).

    Raises:
        ValueError: Naming ``backbone_weights``, if it is not ``"imagenet"`` or an existing
            file, or the file is refused or holds no state dict.
    """
    resolved = resolve_backbone_weights(config.backbone_weights)
    if resolved is None or resolved == IMAGENET:
        return IMAGENET if resolved is not None else None
    return load_backbone_state_dict(resolved, argument="backbone_weights")


def build_backbone(config: VALConfig, weights: Weights = None) -> FeaturePyramid:
    """The image pyramid named by ``config.backbone``.

    Args:
        config: The model configuration.
        weights: Initial weights of a torchvision or timm backbone (``None``: random;
            ``"imagenet"`` or a path/state dict, see
            :mod:`valfusion.encoders.backbone_weights`). Nothing is downloaded unless
            ``"imagenet"`` is given.

    Raises:
        ValueError: If ``config.backbone`` is ``"custom"`` (that module must be passed), or
            ``weights`` are given for the ``"small"`` backbone.
    """
    if config.backbone in ("small", "custom") and weights is not None:
        raise ValueError(
            f"backbone_weights: backbone {config.backbone!r} loads no weights by name; "
            f"got {weights!r}"
        )
    if config.backbone == "small":
        return SmallConvPyramid(config.backbone_channels)
    if config.backbone == "custom":
        raise ValueError(
            "backbone: config.backbone is 'custom'; pass the FeaturePyramid module as backbone="
        )
    timm_name = timm_backbone_name(config.backbone)
    if timm_name is not None:
        kind, name = timm_name
        if kind == "timm":
            return TimmPyramid(name, out_indices=TIMM_OUT_INDICES, weights=weights)
        return TimmViTPyramid(name, weights=weights, img_size=config.image_size)
    return TorchvisionResNetPyramid(arch=config.backbone, stages=RESNET_STAGES, weights=weights)


def _timm_architecture(module: object) -> str | None:
    """The timm model name a built module records (``pretrained_cfg["architecture"]``)."""
    cfg = getattr(module, "pretrained_cfg", None)
    return cfg.get("architecture") if isinstance(cfg, Mapping) else None


def check_backbone(config: VALConfig, backbone: object) -> FeaturePyramid:
    """A passed backbone must be what ``config.backbone`` names, so that
    :meth:`VAL.from_pretrained` can rebuild it; ``"custom"`` accepts any pyramid.

    Returns:
        ``backbone``, unchanged.

    Raises:
        ValueError: Naming ``backbone``, if it is not a pyramid or not the one the config names.
    """
    if not isinstance(backbone, FeaturePyramid):
        raise ValueError(
            f"backbone: expected a valfusion.encoders.FeaturePyramid, got {type(backbone).__name__}"
        )
    if config.backbone == "custom":
        return backbone
    timm_name = timm_backbone_name(config.backbone)
    if config.backbone == "small":
        fits = (
            isinstance(backbone, SmallConvPyramid) and backbone.channels == config.backbone_channels
        )
        named = f"SmallConvPyramid(channels={config.backbone_channels})"
    elif timm_name is not None:
        kind, name = timm_name
        cls: type[FeaturePyramid] = TimmPyramid if kind == "timm" else TimmViTPyramid
        # A pretrained tag ("vit_base_patch16_224.augreg_in21k") names the same architecture.
        fits = isinstance(backbone, cls) and _timm_architecture(backbone.model) == name.split(".")[0]
        named = f"{cls.__name__}({name!r})"
    else:
        fits = (
            isinstance(backbone, TorchvisionResNetPyramid)
            and backbone.arch == config.backbone
            and backbone.stages == RESNET_STAGES
        )
        named = f"TorchvisionResNetPyramid({config.backbone!r}, stages={RESNET_STAGES})"
    if not fits:
        raise ValueError(
            f"backbone: config.backbone={config.backbone!r} means {named} (what "
            f"from_pretrained rebuilds), got a {type(backbone).__name__} with channels "
            f"{backbone.channels}; set config.backbone='custom' to use any other FeaturePyramid"
        )
    return backbone
