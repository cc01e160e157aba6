"""A light CNN feature pyramid that trains on a CPU in minutes (demo and tests)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from valfusion.encoders.pyramid import FeaturePyramid

__all__ = ["SmallConvPyramid"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallConvPyramid(FeaturePyramid):
    """Plain conv-BN-ReLU pyramid: a stride-4 stem, then one stride-2 stage per level.

    Level ``l`` (0-based) has stride ``4 * 2**l``: with the default three levels a
    ``64 x 64`` image gives maps of ``16 x 16``, ``8 x 8`` and ``4 x 4`` (sizes are
    ``ceil(H / stride)`` for any input). Each stage is a strided 3x3 conv-BN-ReLU
    followed by a 3x3 conv-BN-ReLU; the stem is two strided 3x3 conv-BN-ReLU layers.

    Args:
        channels: Channels of each level ``(C_1, ..., C_L)``; ``L = len(channels)``.

    Raises:
        ValueError: If ``channels`` is empty or holds a non-positive value.

    Example:
        >>> import torch
        >>> pyramid = SmallConvPyramid(channels=(8, 16, 32))
        >>> [tuple(f.shape) for f in pyramid(torch.randn(2, 3, 64, 64))]
        [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4)]
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128)) -> None:
        channels = tuple(channels)
        super().__init__(channels, tuple(4 * 2**level for level in range(len(channels))))
        first = channels[0]
        self.stem = nn.Sequential(
            _conv_bn_relu(3, max(first // 2, 1), stride=2),
            _conv_bn_relu(max(first // 2, 1), first, stride=2),
        )
        stages = [_conv_bn_relu(first, first, stride=1)]
        for in_channels, out_channels in pairwise(channels):
            stages.append(
                nn.Sequential(
                    _conv_bn_relu(in_channels, out_channels, stride=2),
                    _conv_bn_relu(out_channels, out_channels, stride=1),
                )
            )
        self.stages = nn.ModuleList(stages)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He initialisation suits the ReLU after every conv (as in torchvision's ResNets).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Compute the ``L`` maps ``(B, channels[l], ceil(H / 4·2^l), ceil(W / 4·2^l))``.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point.

        Returns:
            The maps, finest first.
        """
        features = []
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
