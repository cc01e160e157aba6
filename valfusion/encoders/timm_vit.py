"""Feature pyramid from a timm vision transformer: patch tokens at several depths, as maps.

A ViT keeps one resolution throughout (one token per ``p × p`` patch), so its "pyramid"
is a set of depths rather than of scales: the patch tokens after blocks ``i_1 < i_2 <
i_3`` carry increasingly abstract features of the same ``H/p × W/p`` grid, which is what
VAL's composite transformer needs at each level. timm exposes them through
``forward_intermediates``; timm is an optional dependency (``pip install
"valfusion[timm]"``), imported only when a model is built from its name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from valfusion.encoders.backbone_weights import check_built_module_options, create_timm_model
from valfusion.encoders.pyramid import FeaturePyramid, _image_size, check_images

__all__ = ["TimmViTPyramid", "default_vit_indices"]

_VIT_LAYOUT = ("patch_embed", "blocks", "embed_dim", "forward_intermediates")


def default_vit_indices(depth: int) -> tuple[int, ...]:
    """Blocks that end the 2nd, 3rd and 4th quarters of a ``depth``-block transformer.

    ``(depth/2 - 1, 3·depth/4 - 1, depth - 1)`` rounded down (0-based): ``(5, 8, 11)``
    for ViT-B/16's 12 blocks, ``(11, 17, 23)`` for ViT-L's 24. Repeats are merged, so
    a transformer of fewer than 3 blocks gives fewer levels.

    Args:
        depth: Number of transformer blocks, at least 1.

    Returns:
        Increasing block indices in ``[0, depth)``.

    Raises:
        ValueError: If ``depth`` is not a positive int.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: expected a positive int, got {depth!r}")
    return tuple(sorted({max(quarter * depth // 4 - 1, 0) for quarter in (2, 3, 4)}))


class TimmViTPyramid(FeaturePyramid):
    """Patch tokens of a timm ViT after chosen blocks, as ``(B, C, H/p, W/p)`` maps.

    With ``z_0 = patch_embed(x) + pos`` (prefix tokens such as the class token included)
    and ``z_i = block_i(z_{i-1})``, level ``l`` is ``z_{indices[l] + 1}`` without its
    prefix tokens, rearranged ``"b (h w) c -> b c h w"``: ``channels[l] = embed_dim``,
    ``reductions[l] = p`` (the patch size). Computed by timm's
    ``forward_intermediates(output_fmt="NCHW", intermediates_only=True)``; blocks after
    the last index, the final norm and the classifier are pruned
    (``prune_intermediate_layers``), so they cost nothing and have no parameters.

    Args:
        model: A timm ViT-family model name (``"vit_base_patch16_224"``, a DeiT or EVA
            name, with an optional ``.tag``), built with ``num_classes=0``; or such a
            model already built (it has ``patch_embed``, ``blocks``, ``embed_dim`` and
            ``forward_intermediates``; it is pruned in place).
        indices: Increasing 0-based block indices whose outputs are the levels
            (default: :func:`default_vit_indices`).
        weights: Initial weights (timm names only): ``None`` (random), ``"imagenet"``
            (timm's default pretrained weights for the name, downloaded into timm's
            cache on first use; ImageNet-trained for the plain ``vit_*`` names), or a
            state dict of the plain timm model or the path of a file holding one
            (``.pt``/``.pth`` read with ``torch.load(weights_only=True)``, or
            ``.safetensors``). timm adapts it as it does its own weights (position
            embeddings resampled to another ``img_size``); the classifier may be present
            or absent, any other missing or unexpected key is an error naming the file.
        **kwargs: Passed to ``timm.create_model`` (timm names only), e.g. ``img_size=256``
            or ``dynamic_img_size=True``. ``pretrained=True`` is rejected: pass
            ``weights="imagenet"``.

    Raises:
        ImportError: If ``model`` is a name and timm is not installed.
        ValueError: If ``model`` is not a ViT-family name or module, ``indices`` are not
            increasing block indices, an argument does not fit the kind of ``model``, or
            the weights cannot be read or do not fit.

    Example:
        >>> pyramid = TimmViTPyramid("vit_tiny_patch16_224", img_size=64)  # doctest: +SKIP
        >>> pyramid.indices, pyramid.channels, pyramid.feature_sizes(64)  # doctest: +SKIP
        ((5, 8, 11), (192, 192, 192), [(4, 4), (4, 4), (4, 4)])
    """

    def __init__(
        self,
        model: str | nn.Module,
        *,
        indices: Sequence[int] | None = None,
        weights: Mapping[str, Tensor] | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        vit: Any  # a timm ViT, used through its duck-typed layout
        if isinstance(model, str):
            kwargs.setdefault("num_classes", 0)
            vit = create_timm_model(model, weights, needed_by="TimmViTPyramid", **kwargs)
        elif isinstance(model, nn.Module):
            check_built_module_options(model, {"weights": weights, **kwargs})
            vit = model
        else:
            raise ValueError(
                f"model: expected a timm ViT name or an nn.Module, got {type(model).__name__}"
            )
        lacking = [name for name in _VIT_LAYOUT if not hasattr(vit, name)]
        if lacking:
            raise ValueError(
                f"model: expected a timm ViT-family model (with {', '.join(_VIT_LAYOUT)}); "
                f"{type(vit).__name__} has no {lacking[0]}"
            )
        depth = len(vit.blocks)
        indices = default_vit_indices(depth) if indices is None else tuple(indices)
        if (
            not indices
            or any(type(i) is not int or not 0 <= i < depth for i in indices)
            or list(indices) != sorted(set(indices))
        ):
            raise ValueError(
                f"indices: expected distinct increasing block indices in [0, {depth}), "
                f"got {indices!r}"
            )
        patch_height, patch_width = vit.patch_embed.patch_size
        if patch_height != patch_width:
            raise ValueError(
                f"model: expected square patches, got patch_size {(patch_height, patch_width)}"
            )
        super().__init__([int(vit.embed_dim)] * len(indices), [int(patch_height)] * len(indices))
        vit.prune_intermediate_layers(list(indices), prune_norm=True, prune_head=True)
        self.model: nn.Module = vit
        self.indices: tuple[int, ...] = indices

    def _check_size(self, height: int, width: int, name: str) -> None:
        """A ViT built for a fixed ``img_size`` takes images of exactly that size."""
        embed: Any = self.model.patch_embed
        if getattr(embed, "strict_img_size", False) and embed.img_size is not None:
            expected = tuple(embed.img_size)
            if (height, width) != expected:
                raise ValueError(
                    f"{name}: this ViT was built for {expected[0]}x{expected[1]} images, got "
                    f"{height}x{width}; build it with img_size=({height}, {width}) or "
                    "dynamic_img_size=True"
                )

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute the patch-token maps of a batch of images.

        Args:
            images: RGB images ``(B, 3, H, W)``, floating point, normalised as the
                weights expect; ``(H, W)`` is the model's ``img_size`` unless it was
                built with ``dynamic_img_size=True``.

        Returns:
            ``L`` maps ``(B, embed_dim, H_p, W_p)``, ``(H_p, W_p) = feature_sizes((H, W))[l]``.

        Raises:
            ValueError: If ``images`` has the wrong rank, channel count, dtype or size.
        """
        images = check_images(images)
        self._check_size(images.shape[-2], images.shape[-1], "images")
        return self.forward_features(images)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Run the kept blocks once and return the chosen ones' patch tokens as maps.

        Args:
            images: RGB images ``(B, 3, H, W)`` of a size the model accepts.

        Returns:
            ``L`` maps ``(B, embed_dim, H_p, W_p)``, prefix tokens dropped.
        """
        vit: Any = self.model
        maps: list[Tensor] = vit.forward_intermediates(
            images, indices=list(self.indices), output_fmt="NCHW", intermediates_only=True
        )
        return maps

    def feature_sizes(self, image_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """The patch grid ``(H_p, W_p)`` of ``image_size``, the same at every level.

        ``(⌊H/p⌋, ⌊W/p⌋)``, or ``(⌈H/p⌉, ⌈W/p⌉)`` for a model built with
        ``dynamic_img_pad=True``.

        Args:
            image_size: ``H`` for square images, or ``(H, W)``.

        Returns:
            ``[(H_p, W_p)] * L``.

        Raises:
            ValueError: If ``image_size`` is not a positive int or pair, or not the
                fixed size the model was built for.
        """
        height, width = _image_size(image_size)
        self._check_size(height, width, "image_size")
        embed: Any = self.model.patch_embed
        grid = embed.dynamic_feat_size((height, width))
        return [(int(grid[0]), int(grid[1]))] * self.num_levels

    def extra_repr(self) -> str:
        return f"indices={self.indices}, " + super().extra_repr()
