"""The image pyramid a :class:`~valfusion.models.VALConfig` names: built from the config, or
a passed module checked against it (so that :meth:`~valfusion.models.VAL.from_pretrained`
can always rebuild what was saved)."""

from __future__ import annotations

from valfusion.encoders import FeaturePyramid, SmallConvPyramid, TorchvisionResNetPyramid
from valfusion.models.config import VALConfig

__all__ = ["RESNET_STAGES", "build_backbone", "check_backbone"]

#: The torchvision ResNet stages whose outputs are the pyramid's levels.
RESNET_STAGES = (2, 3, 4)


def build_backbone(config: VALConfig) -> FeaturePyramid:
    """The image pyramid named by ``config.backbone`` (never downloads weights).

    Raises:
        ValueError: If ``config.backbone`` is ``"custom"``: that module must be passed.
    """
    if config.backbone == "small":
        return SmallConvPyramid(config.backbone_channels)
    if config.backbone == "custom":
        raise ValueError(
            "backbone: config.backbone is 'custom'; pass the FeaturePyramid module as backbone="
        )
    return TorchvisionResNetPyramid(arch=config.backbone, stages=RESNET_STAGES)


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
    if config.backbone == "small":
        fits = (
            isinstance(backbone, SmallConvPyramid) and backbone.channels == config.backbone_channels
        )
        named = f"SmallConvPyramid(channels={config.backbone_channels})"
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
