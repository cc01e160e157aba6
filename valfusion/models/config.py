"""What a :class:`~valfusion.models.VAL` model is made of, as data: :class:`VALConfig`,
the backbones it can build by name, and the names of the files a saved model consists of.

A data description: it imports the registries it validates against (composers, loss forms)
and nothing that computes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from valfusion._validation import check_choice, check_positive_int
from valfusion.layers import COMPOSERS
from valfusion.losses.hierarchical_matching import FORMS as _LOSS_FORMS

__all__ = [
    "BACKBONES",
    "CONFIG_FILE",
    "LEGACY_WEIGHTS_FILE",
    "VOCABULARY_FILE",
    "WEIGHTS_FILE",
    "WEIGHTS_FILES",
    "VALConfig",
]

BACKBONES: tuple[str, ...] = ("small", "resnet18", "resnet34", "resnet50", "resnet101", "custom")
"""Backbones :class:`VAL` can build from its configuration alone. ``"small"`` is
:class:`~valfusion.encoders.SmallConvPyramid`; the ResNets are torchvision's stages
2-4 (``vision`` extra), built without weights: pass trained weights through the
``backbone=`` argument or :meth:`VAL.from_pretrained`. ``"custom"`` is any other
:class:`~valfusion.encoders.FeaturePyramid`, passed as ``backbone=``."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"
#: The weight files :meth:`VAL.from_pretrained` looks for, in order of preference.
WEIGHTS_FILES = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)
VOCABULARY_FILE = "vocabulary.json"


@dataclass
class VALConfig:
    """Everything needed to rebuild a :class:`VAL` model (saved as ``config.json``).

    Attributes:
        vocab_size: Number of token ids ``V`` of the text encoder (``len(vocabulary)``).
        composer: One of :data:`~valfusion.layers.COMPOSERS`: ``"val"`` (composite
            transformer, paper configuration), ``"val_official"`` (the official graph),
            ``"tirg"`` (per position), ``"tirg_pooled"`` (on pooled features),
            ``"concat"``, ``"combiner"`` (CLIP4Cir's, on pooled features),
            ``"image_only"``, ``"text_only"``.
        backbone: One of :data:`BACKBONES`; ``"custom"`` means the backbone module is
            passed to the constructor (and to :meth:`VAL.from_pretrained`).
        backbone_channels: Level channels ``(C_1, ..., C_L)`` of the ``"small"`` backbone.
        image_size: Input image side ``H = W``. Only ``"val_official"`` depends on it (its
            spatial gate kernel is the whole feature map, so queries must have this size).
        word_dim: Word embedding size.
        text_hidden_dim: LSTM hidden size.
        text_dim: Text feature size ``D`` fed to every composer.
        text_dropout: Dropout before the text projection.
        semantic_dim: Size ``S`` of the visual-semantic space for side information;
            ``None`` disables the side-information head and the visual-semantic loss.
        composer_kwargs: Extra options for every level's composer (e.g.
            ``{"num_heads": 4}`` for ``"val"``); JSON values only, since they are saved in
            ``config.json`` (tuples are stored as lists).
        loss: ``"softmax"`` (batch classification, the paper) or ``"triplet"``
            (bidirectional semi-hard triplet, the release).
        temperature: Softmax temperature ``tau``.
        learnable_temperature: Learn ``tau`` (clamped).
        margin: Triplet margin.
        level_weights: Per-level loss weights ``w_l``, one per backbone level (default:
            all 1).
        semantic_weight: Weight ``lambda`` of the visual-semantic term.

    Raises:
        ValueError: Naming the field, if a size is not a positive integer, a name is
            unknown, or ``composer_kwargs`` is not JSON-serialisable (or is given for the
            fixed ``"val_official"`` configuration).
    """

    vocab_size: int
    composer: str = "val"
    backbone: str = "small"
    backbone_channels: tuple[int, ...] = (32, 64, 128)
    image_size: int = 64
    word_dim: int = 300
    text_hidden_dim: int = 1024
    text_dim: int = 512
    text_dropout: float = 0.1
    semantic_dim: int | None = None
    composer_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: Literal["softmax", "triplet"] = "softmax"
    temperature: float = 0.1
    learnable_temperature: bool = False
    margin: float = 0.2
    level_weights: tuple[float, ...] | None = None
    semantic_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "image_size", "word_dim", "text_hidden_dim", "text_dim"):
            check_positive_int(getattr(self, name), name)
        if self.semantic_dim is not None:
            check_positive_int(self.semantic_dim, "semantic_dim")
        check_choice(self.composer, "composer", COMPOSERS)
        check_choice(self.backbone, "backbone", BACKBONES)
        check_choice(self.loss, "loss", _LOSS_FORMS)
        self.backbone_channels = tuple(self.backbone_channels)
        if not self.backbone_channels:
            raise ValueError("backbone_channels: expected at least one level, got ()")
        for value in self.backbone_channels:
            check_positive_int(value, "backbone_channels")
        if self.level_weights is not None:
            self.level_weights = tuple(float(w) for w in self.level_weights)
        if not isinstance(self.composer_kwargs, Mapping):
            raise ValueError(
                f"composer_kwargs: expected a dict of options, got "
                f"{type(self.composer_kwargs).__name__}"
            )
        if self.composer == "val_official" and self.composer_kwargs:
            raise ValueError(
                f"composer_kwargs: 'val_official' is a fixed configuration, got options "
                f"{sorted(self.composer_kwargs)}"
            )
        try:
            # Canonical JSON form, so that a saved and reloaded config compares equal.
            self.composer_kwargs = json.loads(json.dumps(dict(self.composer_kwargs)))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"composer_kwargs: expected JSON values (they are saved in {CONFIG_FILE}); "
                f"build the model by hand for other options. Got {self.composer_kwargs!r}: "
                f"{error}"
            ) from error

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dictionary.

        Returns:
            One entry per field; tuples become lists.
        """
        data = dataclasses.asdict(self)
        data["backbone_channels"] = list(self.backbone_channels)
        if self.level_weights is not None:
            data["level_weights"] = list(self.level_weights)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VALConfig:
        """Inverse of :meth:`to_dict`.

        Args:
            data: Field values by name; missing fields take their defaults.

        Returns:
            The configuration.

        Raises:
            ValueError: If ``data`` is not a mapping, has a key that is not a field (a
                config from another version), or a field value is invalid.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"data: expected a mapping of config fields, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"data: unknown config keys {unknown}; expected a subset of {sorted(known)}"
            )
        values = dict(data)
        if "backbone_channels" in values:
            values["backbone_channels"] = tuple(values["backbone_channels"])
        if values.get("level_weights") is not None:
            values["level_weights"] = tuple(values["level_weights"])
        return cls(**values)
