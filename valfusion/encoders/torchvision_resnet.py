"""Feature pyramid from a torchvision ResNet (stages 2-4 of ResNet-50 in the VAL paper).

torchvision is an optional dependency (``pip install "valfusion[vision]"``), imported
only when a :class:`TorchvisionResNetPyramid` is built. The model starts from random
weights unless asked otherwise: ``weights="imagenet"`` fetches torchvision's recommended
ImageNet weights through torchvision's own API and cache; a state dict or a local file
is loaded as :mod:`valfusion.encoders.backbone_weights` describes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from valfusion.encoders.backbone_weights import IMAGENET, check_state_dict, read_weights
from valfusion.encoders.pyramid import FeaturePyramid

__all__ = ["RESNET_ARCHS", "TorchvisionResNetPyramid"]

RESNET_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
"""torchvision builders with the ResNet layout (stem, ``layer1`` ... ``layer4``)."""
_STAGE_REDUCTIONS = {1: 4, 2: 8, 3: 16, 4: 32}


def _import_torchvision() -> Any:
    try:
        import torchvision
    except ImportError as error:
        raise ImportError(
            'TorchvisionResNetPyramid needs torchvision: pip install "valfusion[vision]"'
        ) from error
    return torchvision


def _imagenet_weights(arch: str) -> Any:
    """torchvision's recommended ImageNet weights enum for ``arch`` (nothing is downloaded)."""
    return _import_torchvision().models.get_model_weights(arch).DEFAULT


def _state_dict(
    weights: Mapping[str, Tensor] | str | os.PathLike[str], arch: str
) -> tuple[dict[str, Tensor], str]:
    if isinstance(weights, str) and weights == IMAGENET:
        # torchvision's own cache and download, because the user asked for these weights.
        enum = _imagenet_weights(arch)
        return enum.get_state_dict(progress=True), f"torchvision's {enum}"
    return read_weights(weights, "weights")


class TorchvisionResNetPyramid(FeaturePyramid):
    """The outputs of chosen stages of a torchvision ResNet as a feature pyramid.

    Stage ``s`` is torchvision's ``layer{s}`` with stride ``4 · 2^(s-1)``; ResNet-50
    stages ``(2, 3, 4)`` give ``(512, 1024, 2048)`` channels at strides ``(8, 16, 32)``,
    i.e. ``32², 16², 8²`` maps for a 256 px image. Stages after the last one requested
    and the classifier are dropped. Parameter names match torchvision's
    (``conv1.weight``, ``layer1.0.conv1.weight``, ...).

    Args:
        arch: A torchvision builder name from ``RESNET_ARCHS`` (e.g. ``"resnet50"``).
        weights: ``None`` (random initialisation); ``"imagenet"`` for torchvision's
            recommended ImageNet weights of ``arch`` (``get_model_weights(arch).DEFAULT``,
            downloaded into torchvision's cache on first use); a state dict of the full
            torchvision model; or the path of a file holding one (``.pt``/``.pth`` read
            with ``torch.load(weights_only=True)``, or ``.safetensors``). Keys ``fc.*``
            may be absent; any other missing, unexpected or misshapen key is an error.
        stages: Which of stages 1-4 to output, increasing.
        frozen_stages: Freeze the stem and stages ``1..frozen_stages`` (no gradients,
            batch norm kept in eval mode); 0 trains everything.

    Raises:
        ImportError: If torchvision is not installed.
        ValueError: If ``arch``, ``stages`` or ``frozen_stages`` is invalid, or the
            weights do not fit the architecture.

    Example:
        >>> pyramid = TorchvisionResNetPyramid("resnet50")
        >>> pyramid.channels, pyramid.feature_sizes(256)
        ((512, 1024, 2048), [(32, 32), (16, 16), (8, 8)])
    """

    def __init__(
        self,
        arch: str = "resnet50",
        weights: Mapping[str, Tensor] | str | os.PathLike[str] | None = None,
        stages: Sequence[int] = (2, 3, 4),
        frozen_stages: int = 0,
    ) -> None:
        if arch not in RESNET_ARCHS:
            raise ValueError(f"arch: expected one of {RESNET_ARCHS}, got {arch!r}")
        stages = tuple(stages)
        if (
            not stages
            or any(type(s) is not int or s not in _STAGE_REDUCTIONS for s in stages)
            or list(stages) != sorted(set(stages))
        ):
            raise ValueError(
                f"stages: expected distinct increasing values from (1, 2, 3, 4), got {stages!r}"
            )
        if type(frozen_stages) is not int or frozen_stages not in range(5):
            raise ValueError(f"frozen_stages: expected an int in [0, 4], got {frozen_stages!r}")
        torchvision = _import_torchvision()
        model = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            state, source = _state_dict(weights, arch)
            check_state_dict(
                model.state_dict(),
                state,
                argument="weights",
                source=source,
                model_name=f"torchvision {arch}",
                head=("fc",),
            )
            model.load_state_dict(state, strict=False)
        layers = [getattr(model, f"layer{s}") for s in range(1, stages[-1] + 1)]
        channels = []
        for s in stages:
            block = layers[s - 1][-1]
            channels.append((block.bn3 if hasattr(block, "bn3") else block.bn2).num_features)
        super().__init__(channels, [_STAGE_REDUCTIONS[s] for s in stages])
        self.arch = arch
        self.stages = stages
        self.frozen_stages = frozen_stages
        self.conv1, self.bn1, self.relu, self.maxpool = (
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
        )
        for s, layer in enumerate(layers, start=1):
            self.add_module(f"layer{s}", layer)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages == 0:
            return []
        stem = [self.conv1, self.bn1]
        return stem + [
            getattr(self, f"layer{s}")
            for s in range(1, self.frozen_stages + 1)
            if hasattr(self, f"layer{s}")
        ]

    def train(self, mode: bool = True) -> TorchvisionResNetPyramid:
        """Set training mode; frozen stages stay in eval mode (fixed batch-norm statistics).

        Args:
            mode: ``True`` for training mode, ``False`` for evaluation mode.

        Returns:
            ``self``.
        """
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Run the stem and stages ``1..max(stages)``; keep the requested stage outputs.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point (normalised as the
                weights expect, e.g. ImageNet mean/std).

        Returns:
            One map per requested stage ``s``: ``(B, C_s, ceil(H / 2^(s+1)), ceil(W / 2^(s+1)))``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        features = []
        for s in range(1, self.stages[-1] + 1):
            x = getattr(self, f"layer{s}")(x)
            if s in self.stages:
                features.append(x)
        return features
