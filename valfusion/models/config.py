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
from valfusion.encoders.text_encoder_spec import parse_text_encoder_spec
from valfusion.layers import COMPOSERS
from valfusion.losses.hierarchical_matching import FORMS as _LOSS_FORMS

__all__ = [
    "BACKBONES",
    "CONFIG_FILE",
    "LEGACY_WEIGHTS_FILE",
    "TEXT_ENCODER_DIR",
    "TIMM_BACKBONE_PREFIXES",
    "VOCABULARY_FILE",
    "WEIGHTS_FILE",
    "WEIGHTS_FILES",
    "VALConfig",
]

BACKBONES: tuple[str, ...] = ("small", "resnet18", "resnet34", "resnet50", "resnet101", "custom")
"""Backbones :class:`VAL` can build from its configuration alone. ``"small"`` is
:class:`~valfusion.encoders.SmallConvPyramid`; the ResNets are torchvision's stages
2-4 (``vision`` extra), built without weights: pass trained weights through the
``backbone=`` argument, ``VALConfig.backbone_weights`` or :meth:`VAL.from_pretrained`.
``"custom"`` is any other :class:`~valfusion.encoders.FeaturePyramid`, passed as
``backbone=``. Besides these names, ``"timm:NAME"`` and ``"timm_vit:NAME"`` name timm
models (:data:`TIMM_BACKBONE_PREFIXES`)."""

TIMM_BACKBONE_PREFIXES: tuple[str, ...] = ("timm:", "timm_vit:")
"""Prefixes of backbone names built with timm (``timm`` extra): ``"timm:NAME"`` is
:class:`~valfusion.encoders.TimmPyramid` (``features_only``, its last three levels),
``"timm_vit:NAME"`` is :class:`~valfusion.encoders.TimmViTPyramid` (patch tokens at three
depths, ``img_size = image_size``)."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"
#: The weight files :meth:`VAL.from_pretrained` looks for, in order of preference.
WEIGHTS_FILES = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)
VOCABULARY_FILE = "vocabulary.json"
#: The folder of a transformer text encoder's architecture (configuration, tokenizer files).
TEXT_ENCODER_DIR = "text_encoder"


@dataclass
class VALConfig:
    """Everything needed to rebuild a :class:`VAL` model (saved as ``config.json``).

    Attributes:
        vocab_size: Number of token ids ``V`` of the text encoder (``len(vocabulary)`` for
            the LSTM, the transformer's ``vocab_size`` for the others).
        composer: One of :data:`~valfusion.layers.COMPOSERS`: ``"val"`` (composite
            transformer, paper configuration), ``"val_official"`` (the official graph),
            ``"tirg"`` (per position), ``"tirg_pooled"`` (on pooled features),
            ``"concat"``, ``"combiner"`` (CLIP4Cir's, on pooled features),
            ``"image_only"``, ``"text_only"``.
        backbone: One of :data:`BACKBONES`, ``"timm:NAME"`` or ``"timm_vit:NAME"`` (see
            :data:`TIMM_BACKBONE_PREFIXES`); ``"custom"`` means the backbone module is passed
            to the constructor (and to :meth:`VAL.from_pretrained`).
        backbone_weights: Initial weights of a torchvision or timm backbone when a model is
            built from this config: ``None`` (random), ``"imagenet"`` (torchvision's or
            timm's published weights, downloaded into their cache) or the path of a local
            state dict (see :mod:`valfusion.encoders.backbone_weights`). The path is checked
            only when a model is built for training: :meth:`VAL.from_pretrained` ignores it
            (the saved weights replace them), so a saved config still loads elsewhere.
        backbone_channels: Level channels ``(C_1, ..., C_L)`` of the ``"small"`` backbone.
        image_size: Input image side ``H = W``. Only ``"val_official"`` depends on it (its
            spatial gate kernel is the whole feature map, so queries must have this size).
        text_encoder: The text encoder spec (:func:`~valfusion.encoders.build_text_encoder`):
            ``"lstm"`` (over the run's :class:`~valfusion.encoders.Vocabulary`),
            ``"hf:NAME_OR_PATH"`` (Hugging Face ``transformers``) or
            ``"open_clip:MODEL[@PRETRAINED]"``.
        text_encoder_kwargs: Options of a transformer text encoder (``pooling``, ``norm``,
            ``freeze``, ``max_length`` for ``"hf"``; ``norm``, ``freeze`` for
            ``"open_clip"``); JSON values only. The LSTM takes its options from the fields
            below.
        word_dim: Word embedding size (LSTM).
        text_hidden_dim: LSTM hidden size.
        text_dim: Text feature size ``D`` fed to every composer.
        text_dropout: Dropout before the text projection (LSTM).
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
            unknown, ``composer_kwargs`` or ``text_encoder_kwargs`` is not JSON-serialisable
            (or is given for the fixed ``"val_official"`` configuration, or for the LSTM),
            or ``backbone_weights`` is given for a backbone that takes none.
    """

    vocab_size: int
    composer: str = "val"
    backbone: str = "small"
    backbone_channels: tuple[int, ...] = (32, 64, 128)
    backbone_weights: str | None = None
    image_size: int = 64
    text_encoder: str = "lstm"
    text_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
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
        _check_backbone_name(self.backbone)
        if self.backbone_weights is not None:
            if not isinstance(self.backbone_weights, str) or not self.backbone_weights:
                raise ValueError(
                    f"backbone_weights: expected None, 'imagenet' or the path of a weights "
                    f"file, got {self.backbone_weights!r}"
                )
            if self.backbone in ("small", "custom"):
                raise ValueError(
                    f"backbone_weights: only torchvision and timm backbones load weights by "
                    f"name; backbone {self.backbone!r} takes none (got "
                    f"{self.backbone_weights!r})"
                )
        parse_text_encoder_spec(self.text_encoder)
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
        self.composer_kwargs = _json_options(self.composer_kwargs, "composer_kwargs")
        if not isinstance(self.text_encoder_kwargs, Mapping):
            raise ValueError(
                f"text_encoder_kwargs: expected a dict of options, got "
                f"{type(self.text_encoder_kwargs).__name__}"
            )
        if self.text_encoder == "lstm" and self.text_encoder_kwargs:
            raise ValueError(
                f"text_encoder_kwargs: options of a transformer text encoder; the 'lstm' "
                f"takes word_dim, text_hidden_dim and text_dropout instead, got "
                f"{sorted(self.text_encoder_kwargs)}"
            )
        self.text_encoder_kwargs = _json_options(self.text_encoder_kwargs, "text_encoder_kwargs")

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


def _check_backbone_name(backbone: object) -> None:
    """One of :data:`BACKBONES`, or a timm prefix followed by a model name."""
    if isinstance(backbone, str):
        for prefix in TIMM_BACKBONE_PREFIXES:
            if backbone.startswith(prefix):
                if backbone[len(prefix) :].strip():
                    return
                break
    check_choice(
        backbone, "backbone", (*BACKBONES, *(f"{p}NAME" for p in TIMM_BACKBONE_PREFIXES))
    )


def _json_options(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``options`` in canonical JSON form, so that a saved and reloaded config compares equal."""
    try:
        loaded: dict[str, Any] = json.loads(json.dumps(dict(options)))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name}: expected JSON values (they are saved in {CONFIG_FILE}); build the model "
            f"by hand for other options. Got {options!r}: {error}"
        ) from error
    return loaded
