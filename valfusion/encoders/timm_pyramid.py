"""Feature pyramid from any backbone that returns a list of feature maps (timm ``features_only``).

timm is an optional dependency (``pip install "valfusion[timm]"``), imported only when a
model is built from its name. A backbone module built elsewhere needs no timm at all.
Weights are random unless asked for: ``weights="imagenet"`` (timm's pretrained weights,
its own cache and download) or a local file, as :mod:`valfusion.encoders.backbone_weights`
describes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.func import functional_call

from valfusion.encoders.backbone_weights import check_built_module_options, create_timm_model
from valfusion.encoders.pyramid import FeaturePyramid, _image_size

__all__ = ["TimmPyramid"]


def _feature_info(model: nn.Module, what: str) -> tuple[int, ...] | None:
    """``channels``/``reductions`` from a timm ``FeatureInfo`` or a list of dicts."""
    info = getattr(model, "feature_info", None)
    method = "channels" if what == "channels" else "reduction"
    if info is None:
        return None
    if callable(getattr(info, method, None)):
        return tuple(int(v) for v in getattr(info, method)())
    key = "num_chs" if what == "channels" else "reduction"
    if isinstance(info, Sequence) and all(isinstance(d, Mapping) and key in d for d in info):
        return tuple(int(d[key]) for d in info)
    return None


class TimmPyramid(FeaturePyramid):
    """Adapter for backbones that map images to a list of feature maps.

    Either a timm model name, built as ``timm.create_model(name, features_only=True,
    pretrained=False, out_indices=out_indices, **kwargs)``, or a module already built
    whose ``forward(images (B, 3, H, W))`` returns a list (or dict, in order) of maps
    ``(B, C_l, H_l, W_l)``. Channels and strides are read from the module's
    ``feature_info`` (a timm ``FeatureInfo`` or a list of ``{"num_chs", "reduction"}``
    dicts) unless given. A module with ``output_fmt == "NHWC"`` (timm's Swin-style
    backbones) has its maps rearranged to ``(B, C, H, W)``.

    Args:
        model: A timm model name or an ``nn.Module`` returning a list of maps.
        out_indices: Feature levels to return (timm names only; default: timm's).
        weights: Initial weights (timm names only): ``None`` (random), ``"imagenet"``
            (timm's pretrained weights for the name, downloaded into timm's cache on
            first use), or a state dict of the plain timm model or the path of a file
            holding one (``.pt``/``.pth`` read with ``torch.load(weights_only=True)``,
            or ``.safetensors``); the classifier head may be present or absent, any
            other missing or unexpected key is an error naming the file.
        channels: Channels of each output map, if the module has no ``feature_info``.
        reductions: Stride of each output map, if the module has no ``feature_info``.
        **kwargs: Passed to ``timm.create_model`` (timm names only). ``pretrained=True``
            is rejected: pass ``weights="imagenet"`` instead.

    Raises:
        ImportError: If ``model`` is a name and timm is not installed.
        ValueError: If an argument does not fit the kind of ``model``, the weights
            cannot be read or do not fit the model, or channels/strides are neither
            given nor discoverable.

    Example:
        >>> pyramid = TimmPyramid("resnet18", out_indices=(2, 3, 4))  # doctest: +SKIP
        >>> pyramid.channels, pyramid.reductions  # doctest: +SKIP
        ((128, 256, 512), (8, 16, 32))
    """

    def __init__(
        self,
        model: str | nn.Module,
        *,
        out_indices: Sequence[int] | None = None,
        weights: Mapping[str, Tensor] | str | os.PathLike[str] | None = None,
        channels: Sequence[int] | None = None,
        reductions: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            if out_indices is not None:
                kwargs["out_indices"] = tuple(out_indices)
            backbone: nn.Module = create_timm_model(
                model, weights, needed_by="TimmPyramid", features_only=True, **kwargs
            )
        elif isinstance(model, nn.Module):
            backbone = model
            check_built_module_options(
                model, {"out_indices": out_indices, "weights": weights, **kwargs}
            )
        else:
            raise ValueError(
                f"model: expected a timm model name or an nn.Module, got {type(model).__name__}"
            )
        channels = tuple(channels) if channels is not None else _feature_info(backbone, "channels")
        if channels is None:
            raise ValueError(
                f"channels: {type(backbone).__name__} has no feature_info; pass channels= explicitly"
            )
        reductions = (
            tuple(reductions) if reductions is not None else _feature_info(backbone, "reduction")
        )
        if reductions is None:
            raise ValueError(
                f"reductions: {type(backbone).__name__} has no feature_info; pass reductions= explicitly"
            )
        super().__init__(channels, reductions)
        self.model = backbone
        # timm's Format is a str enum, so it compares equal to its value.
        self._nhwc = getattr(backbone, "output_fmt", "NCHW") == "NHWC"

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Run the backbone and return its maps as ``(B, C_l, H_l, W_l)``.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point.

        Returns:
            ``L`` maps with ``channels[l]`` channels each.

        Raises:
            ValueError: If the backbone returns a different number of maps or channel
                counts than declared.
        """
        outputs = self.model(images)
        if isinstance(outputs, Mapping):
            outputs = list(outputs.values())
        if isinstance(outputs, Tensor) or not isinstance(outputs, Sequence):
            raise ValueError(
                f"model: expected the backbone to return a list of maps, got {type(outputs).__name__}"
            )
        if self._nhwc:
            outputs = [rearrange(x, "b h w c -> b c h w") for x in outputs]
        channels = tuple(x.shape[1] if x.dim() == 4 else -1 for x in outputs)
        if channels != self.channels:
            raise ValueError(
                f"model: returned maps with channels {channels} (shapes "
                f"{[tuple(x.shape) for x in outputs]}), but channels declares {self.channels}"
            )
        return list(outputs)

    def feature_sizes(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """Spatial size of every level, found by running the backbone on the meta device.

        No memory is allocated and no arithmetic is done: parameters, buffers and the
        input are replaced by ``meta`` tensors that carry shapes only.

        Args:
            image_size: ``H`` for square images, or ``(H, W)``.

        Returns:
            ``[(H_1, W_1), ..., (H_L, W_L)]``.
        """
        height, width = _image_size(image_size)
        state = {
            name: torch.empty_like(tensor, device="meta")
            for name, tensor in (*self.named_parameters(), *self.named_buffers())
        }
        images = torch.empty(1, 3, height, width, device="meta")
        maps = functional_call(self, state, (images,))
        return [(int(x.shape[-2]), int(x.shape[-1])) for x in maps]
