"""One composer per CNN level: a list of maps and a text feature in, a list of maps out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from valfusion.layers.composite_attention import CompositeAttention
from valfusion.layers.registry import build_composer

__all__ = ["MultiLevelComposer"]


class MultiLevelComposer(nn.Module):
    """Apply composer ``l`` to level ``l``: ``F_o^l = composer_l(F_r^l, t)``.

    Args:
        levels: one composer per level, each with the composer call signature
            ``composer(image_features, text_features, *, return_attention=False)``.

    Raises:
        ValueError: when ``levels`` is empty.
    """

    def __init__(self, levels: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(levels) == 0:
            raise ValueError("levels: expected at least one composer, got none")
        self.levels = nn.ModuleList(levels)

    @classmethod
    def build(
        cls,
        name: str,
        channels: Sequence[int],
        text_channels: int,
        feature_sizes: Sequence[int | tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> MultiLevelComposer:
        """One composer of kind ``name`` per level (see :func:`build_composer`).

        Args:
            name: a name from :data:`COMPOSERS`.
            channels: ``C_l`` of every level, e.g. ``(512, 1024, 2048)``.
            text_channels: ``D`` (shared by all levels).
            feature_sizes: ``(H_l, W_l)`` of every level (needed by ``"val_official"``).
            **kwargs: options passed to every level's constructor.

        Returns:
            A :class:`MultiLevelComposer`.

        Raises:
            ValueError: when ``feature_sizes`` and ``channels`` differ in length, or from
                :func:`build_composer`.
        """
        if feature_sizes is not None and len(feature_sizes) != len(channels):
            raise ValueError(
                f"feature_sizes: expected one size per level ({len(channels)}), "
                f"got {len(feature_sizes)}"
            )
        sizes = [None] * len(channels) if feature_sizes is None else list(feature_sizes)
        return cls(
            [
                build_composer(name, c, text_channels, feature_size=size, **kwargs)
                for c, size in zip(channels, sizes)
            ]
        )

    def forward(
        self,
        image_features: Sequence[Tensor],
        text_features: Tensor,
        *,
        return_attention: bool = False,
    ) -> list[Tensor] | tuple[list[Tensor], list[CompositeAttention | None]]:
        """Compose every level with the same text feature.

        Args:
            image_features: one map per level, level ``l`` of shape ``(B, C_l, H_l, W_l)``.
            text_features: ``(B, D)``.
            return_attention: also return each level's attention (``None`` for composers
                without attention maps).

        Returns:
            The composed maps, each with its input's shape; with ``return_attention=True``
            the pair ``(maps, attentions)``.

        Raises:
            ValueError: when the number of maps differs from the number of levels, or from
                a level's composer.
        """
        if isinstance(image_features, Tensor) or len(image_features) != len(self.levels):
            got = (
                f"a single tensor of shape {tuple(image_features.shape)}"
                if isinstance(image_features, Tensor)
                else f"{len(image_features)} maps"
            )
            raise ValueError(
                f"image_features: expected a sequence of {len(self.levels)} maps "
                f"(one per level), got {got}"
            )
        if not return_attention:
            return [level(x, text_features) for level, x in zip(self.levels, image_features)]
        outputs, attentions = [], []
        for level, x in zip(self.levels, image_features):
            out, attention = level(x, text_features, return_attention=True)
            outputs.append(out)
            attentions.append(attention)
        return outputs, attentions
