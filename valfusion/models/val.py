"""The reference end-to-end VAL model, assembled only from valfusion's public parts.

``image pyramid -> one composer per level -> global average pooling -> L2-normalised level
embeddings -> concatenation``. Every piece is a public class, so the same model can be
built by hand in user code; the composer is chosen by name, so VAL and its baselines are
compared in one harness.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from valfusion._validation import check_ndim, check_positive_int, fmt_shape
from valfusion.encoders import (
    FeaturePyramid,
    LSTMTextEncoder,
    SmallConvPyramid,
    TorchvisionResNetPyramid,
    Vocabulary,
)
from valfusion.layers import COMPOSERS, CompositeAttention, MultiLevelComposer
from valfusion.losses import HierarchicalMatchingLoss, HierarchicalMatchingOutput

__all__ = ["BACKBONES", "VAL", "CompositionOutput", "SearchResult", "VALConfig"]

#: Backbones :class:`VAL` can build from its configuration alone. ``"small"`` is
#: :class:`~valfusion.encoders.SmallConvPyramid`; the ResNets are torchvision's
#: (``vision`` extra), built without weights: pass trained weights through the
#: ``backbone=`` argument or :meth:`VAL.from_pretrained`.
BACKBONES: tuple[str, ...] = ("small", "resnet18", "resnet34", "resnet50", "resnet101", "custom")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
VOCABULARY_FILE = "vocabulary.json"


@dataclass
class VALConfig:
    """Everything needed to rebuild a :class:`VAL` model (saved as ``config.json``).

    Attributes:
        vocab_size: Number of token ids ``V`` of the text encoder.
        composer: One of :data:`~valfusion.layers.COMPOSERS`: ``"val"`` (composite
            transformer, paper configuration), ``"val_official"`` (the official graph),
            ``"tirg"``, ``"concat"``, ``"image_only"``, ``"text_only"``.
        backbone: One of :data:`BACKBONES`; ``"custom"`` means the backbone module is
            passed to the constructor (and to :meth:`VAL.from_pretrained`).
        backbone_channels: Level channels of the ``"small"`` backbone.
        image_size: Input image side (needed by ``"val_official"``, whose spatial gate
            kernel is the whole feature map).
        word_dim: Word embedding size.
        text_hidden_dim: LSTM hidden size.
        text_dim: Text feature size ``D`` fed to every composer.
        text_dropout: Dropout before the text projection.
        semantic_dim: Size of the visual-semantic space for side information; ``None``
            disables the side-information head and the visual-semantic loss.
        composer_kwargs: Extra options for every level's composer (e.g.
            ``{"num_heads": 4}`` for ``"val"``).
        loss: ``"softmax"`` (batch classification, the paper) or ``"triplet"``
            (bidirectional semi-hard triplet, the release).
        temperature: Softmax temperature ``tau``.
        learnable_temperature: Learn ``tau`` (clamped).
        margin: Triplet margin.
        level_weights: Per-level loss weights (default: all 1).
        semantic_weight: Weight ``lambda`` of the visual-semantic term.
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
    loss: str = "softmax"
    temperature: float = 0.1
    learnable_temperature: bool = False
    margin: float = 0.2
    level_weights: tuple[float, ...] | None = None
    semantic_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int(self.vocab_size, "vocab_size")
        check_positive_int(self.image_size, "image_size")
        if self.composer not in COMPOSERS:
            raise ValueError(f"composer: expected one of {COMPOSERS}, got {self.composer!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.loss not in ("softmax", "triplet"):
            raise ValueError(f"loss: expected 'softmax' or 'triplet', got {self.loss!r}")
        if self.semantic_dim is not None:
            check_positive_int(self.semantic_dim, "semantic_dim")
        self.backbone_channels = tuple(self.backbone_channels)
        if self.level_weights is not None:
            self.level_weights = tuple(float(w) for w in self.level_weights)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        data = dataclasses.asdict(self)
        data["backbone_channels"] = list(self.backbone_channels)
        if self.level_weights is not None:
            data["level_weights"] = list(self.level_weights)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VALConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected a subset of {sorted(known)}")
        values = dict(data)
        if "backbone_channels" in values:
            values["backbone_channels"] = tuple(values["backbone_channels"])
        if values.get("level_weights") is not None:
            values["level_weights"] = tuple(values["level_weights"])
        return cls(**values)


@dataclass
class CompositionOutput:
    """What :meth:`VAL.compose` returns when levels or attention are asked for.

    Attributes:
        embedding: ``(B, E)`` retrieval embedding, unit norm, ``E = sum_l C_l``.
        levels: One ``(B, C_l)`` unit-norm embedding per level.
        attention: One :class:`~valfusion.layers.CompositeAttention` (or ``None`` for
            composers without attention) per level, when asked for.
    """

    embedding: Tensor
    levels: list[Tensor]
    attention: list[CompositeAttention | None] | None = None


@dataclass
class SearchResult:
    """Top-k gallery items of one query (:meth:`VAL.search`).

    Attributes:
        indices: ``(k,)`` gallery indices, best first (ties: lower index first).
        scores: ``(k,)`` cosine similarities.
        attention: Per-level attention of the query when asked for, else ``None``.
    """

    indices: Tensor
    scores: Tensor
    attention: list[CompositeAttention | None] | None = None


def _pool_levels(maps: Sequence[Tensor]) -> list[Tensor]:
    """Global average pooling then L2 normalisation of each level: ``(B, C, H, W) -> (B, C)``."""
    return [F.normalize(reduce(m.float(), "b c h w -> b c", "mean"), dim=-1) for m in maps]


def _concat_levels(levels: Sequence[Tensor]) -> Tensor:
    """Concatenate unit-norm level embeddings, scaled by ``1/sqrt(L)`` so the result is unit norm.

    The cosine of two such embeddings is then the mean of the per-level cosines, which is
    how the official evaluation combines levels.
    """
    return torch.cat(list(levels), dim=-1) / math.sqrt(len(levels))


def _atomic_write_bytes(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_backbone(config: VALConfig) -> FeaturePyramid:
    """The image pyramid named by ``config.backbone`` (never downloads weights)."""
    if config.backbone == "small":
        return SmallConvPyramid(config.backbone_channels)
    if config.backbone == "custom":
        raise ValueError(
            "backbone: config.backbone is 'custom'; pass the backbone module as backbone="
        )
    return TorchvisionResNetPyramid(arch=config.backbone)


class VAL(nn.Module):
    """Image search with text feedback: VAL (Chen, Gong, Bazzani, CVPR 2020) and baselines.

    For a reference image ``x_r`` and text ``s``, the pyramid gives maps ``F_r^l``
    ``(B, C_l, H_l, W_l)``, the text encoder ``t`` ``(B, D)``, and composer ``l`` the
    composed map ``F_o^l``. Each level is pooled and normalised,
    ``f_o^l = GAP(F_o^l) / ||GAP(F_o^l)||`` ``(B, C_l)``, and the retrieval embedding is
    ``[f_o^1; ...; f_o^L] / sqrt(L)`` ``(B, E)``, ``E = sum_l C_l`` (unit norm). Gallery
    images go through the same pyramid without composition.

    Args:
        config: The model configuration.
        vocabulary: The :class:`~valfusion.encoders.Vocabulary` (kept with the model so
            :meth:`search` accepts raw text and :meth:`save_pretrained` stores it).
        backbone: A :class:`~valfusion.encoders.FeaturePyramid` to use instead of
            building ``config.backbone`` (required when ``config.backbone == "custom"``;
            use it to pass a pretrained ResNet).

    Example:
        >>> vocab = Vocabulary.from_texts(["make it red", "add a blue circle"])
        >>> model = VAL(VALConfig(vocab_size=len(vocab), word_dim=16, text_hidden_dim=32,
        ...                       text_dim=32), vocabulary=vocab).eval()
        >>> tokens, lengths = vocab.encode(["make it red", "add a blue circle"])
        >>> model.compose(torch.randn(2, 3, 64, 64), tokens, lengths).shape
        torch.Size([2, 224])
    """

    def __init__(
        self,
        config: VALConfig,
        vocabulary: Vocabulary | None = None,
        backbone: FeaturePyramid | None = None,
    ) -> None:
        super().__init__()
        if vocabulary is not None and len(vocabulary) != config.vocab_size:
            raise ValueError(
                f"vocabulary: has {len(vocabulary)} tokens but config.vocab_size is "
                f"{config.vocab_size}"
            )
        self.config = config
        self.vocabulary = vocabulary
        self.backbone = backbone if backbone is not None else build_backbone(config)
        if not isinstance(self.backbone, FeaturePyramid):
            raise ValueError(
                f"backbone: expected a valfusion.encoders.FeaturePyramid, got "
                f"{type(self.backbone).__name__}"
            )
        self.text_encoder = LSTMTextEncoder(
            config.vocab_size,
            word_dim=config.word_dim,
            hidden_dim=config.text_hidden_dim,
            out_dim=config.text_dim,
            dropout=config.text_dropout,
        )
        feature_sizes = (
            self.backbone.feature_sizes(config.image_size)
            if config.composer == "val_official"
            else None
        )
        self.composer = MultiLevelComposer.build(
            config.composer,
            self.backbone.channels,
            config.text_dim,
            feature_sizes=feature_sizes,
            **config.composer_kwargs,
        )
        self.embedding_dim = sum(self.backbone.channels)
        if config.semantic_dim is not None:
            # Visual-semantic space: composed embedding and side-information text are both
            # projected into it (the side information shares the text encoder).
            self.semantic_query = nn.Linear(self.embedding_dim, config.semantic_dim)
            self.semantic_text = nn.Linear(config.text_dim, config.semantic_dim)
        else:
            self.semantic_query = None
            self.semantic_text = None
        self.loss = HierarchicalMatchingLoss(
            form=config.loss,
            level_weights=config.level_weights,
            semantic_weight=config.semantic_weight,
            temperature=config.temperature,
            learnable_temperature=config.learnable_temperature,
            margin=config.margin,
        )

    # ------------------------------------------------------------------ encoding

    def encode_text(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Text feature ``t``: tokens ``(B, T)`` long and lengths ``(B,)`` -> ``(B, D)``."""
        return self.text_encoder(tokens, lengths)

    def encode_image(
        self, images: Tensor, *, return_levels: bool = False
    ) -> Tensor | CompositionOutput:
        """Gallery / target embedding of images, without composition.

        Args:
            images: ``(B, 3, H, W)`` float images.
            return_levels: Also return the per-level embeddings.

        Returns:
            ``(B, E)`` unit-norm embeddings, or a :class:`CompositionOutput` with the
            levels ``(B, C_l)`` when ``return_levels=True``.
        """
        levels = _pool_levels(self.backbone(images))
        embedding = _concat_levels(levels)
        return CompositionOutput(embedding, levels) if return_levels else embedding

    def compose(
        self,
        images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        *,
        return_levels: bool = False,
        return_attention: bool = False,
    ) -> Tensor | CompositionOutput:
        """Query embedding of reference images modified by texts.

        Args:
            images: ``(B, 3, H, W)`` reference images.
            tokens: ``(B, T)`` token ids (``Vocabulary.encode``).
            lengths: ``(B,)`` valid lengths, each in ``[1, T]``.
            return_levels: Also return the per-level embeddings ``(B, C_l)``.
            return_attention: Also return each level's attention maps.

        Returns:
            ``(B, E)`` unit-norm query embeddings, or a :class:`CompositionOutput` when
            levels or attention are asked for.

        Raises:
            ValueError: If images, tokens or lengths are malformed, or their batch sizes
                differ.
        """
        maps = self.backbone(images)
        text = self.encode_text(tokens, lengths)
        if text.shape[0] != images.shape[0]:
            raise ValueError(
                f"tokens: batch size {tokens.shape[0]} does not match images batch size "
                f"{images.shape[0]} (images shape {fmt_shape(images)})"
            )
        attention = None
        if return_attention:
            composed, attention = self.composer(maps, text, return_attention=True)
        else:
            composed = self.composer(maps, text)
        levels = _pool_levels(composed)
        embedding = _concat_levels(levels)
        if return_levels or return_attention:
            return CompositionOutput(embedding, levels, attention)
        return embedding

    def forward(self, images: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Same as :meth:`compose`: ``(B, 3, H, W), (B, T), (B,) -> (B, E)``."""
        return self.compose(images, tokens, lengths)

    def encode_side_info(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Side information (tags, captions) in the visual-semantic space: ``(B, T) -> (B, S)``.

        Raises:
            ValueError: If the model was built with ``semantic_dim=None``.
        """
        if self.semantic_text is None:
            raise ValueError("semantic_dim: the model has no side-information head (None)")
        return self.semantic_text(self.encode_text(tokens, lengths))

    def project_semantic(self, composed: Tensor) -> Tensor:
        """Composed embeddings ``(B, E)`` into the visual-semantic space ``(B, S)``."""
        if self.semantic_query is None:
            raise ValueError("semantic_dim: the model has no side-information head (None)")
        return self.semantic_query(composed)

    # ------------------------------------------------------------------ training

    def compute_loss(
        self,
        reference_images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        target_images: Tensor,
        side_tokens: Tensor | None = None,
        side_lengths: Tensor | None = None,
    ) -> HierarchicalMatchingOutput:
        """Hierarchical matching loss of a batch of triplets.

        Visual-visual at every level between ``f_o^l`` (composed) and ``f_t^l`` (target),
        plus, when side information is given, visual-semantic between the projected
        composed embedding and the encoded side information of the target.

        Args:
            reference_images: ``(B, 3, H, W)``.
            tokens: ``(B, T)`` modification-text ids.
            lengths: ``(B,)``.
            target_images: ``(B, 3, H, W)``.
            side_tokens: ``(B, T')`` side-information ids of the targets, or ``None``.
            side_lengths: ``(B,)``, given with ``side_tokens``.

        Returns:
            A :class:`~valfusion.losses.HierarchicalMatchingOutput` (total, per level,
            semantic).
        """
        if (side_tokens is None) != (side_lengths is None):
            raise ValueError("side_lengths: give side_tokens and side_lengths together")
        query = self.compose(reference_images, tokens, lengths, return_levels=True)
        target = self.encode_image(target_images, return_levels=True)
        assert isinstance(query, CompositionOutput) and isinstance(target, CompositionOutput)
        if target.embedding.shape[0] != query.embedding.shape[0]:
            raise ValueError(
                f"target_images: batch size {target_images.shape[0]} does not match "
                f"reference_images batch size {reference_images.shape[0]}"
            )
        composed_semantic = side = None
        if side_tokens is not None and side_lengths is not None:
            side = self.encode_side_info(side_tokens, side_lengths)
            composed_semantic = self.project_semantic(query.embedding)
        return self.loss(query.levels, target.levels, composed_semantic, side)

    # ------------------------------------------------------------------ search

    @torch.no_grad()
    def embed_gallery(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Embed gallery images ``(G, 3, H, W)`` in batches -> ``(G, E)``."""
        check_positive_int(batch_size, "batch_size")
        return torch.cat(
            [self.encode_image(chunk) for chunk in images.split(batch_size)], dim=0
        )

    @torch.no_grad()
    def search(
        self,
        image: Tensor,
        text: str | tuple[Tensor, Tensor],
        gallery: Tensor,
        *,
        k: int = 10,
        exclude: int | None = None,
        return_attention: bool = False,
        batch_size: int = 256,
    ) -> SearchResult:
        """One query: the top-k gallery items for a reference image and a text.

        Args:
            image: ``(3, H, W)`` or ``(1, 3, H, W)`` reference image.
            text: The modification text (needs the model's vocabulary), or
                ``(tokens (1, T), lengths (1,))``.
            gallery: Gallery images ``(G, 3, H, W)`` or precomputed embeddings ``(G, E)``
                from :meth:`encode_image` / :meth:`embed_gallery`.
            k: How many results (clipped to the gallery size).
            exclude: A gallery index to leave out (the reference image itself).
            return_attention: Also return the query's attention maps.
            batch_size: Batch size for embedding gallery images.

        Returns:
            A :class:`SearchResult` with ``(k,)`` indices and cosine scores.
        """
        check_positive_int(k, "k")
        if image.dim() == 3:
            image = image.unsqueeze(0)
        check_ndim(image, "image", 4, "(1, 3, H, W)")
        if image.shape[0] != 1:
            raise ValueError(f"image: expected one image (1, 3, H, W), got {fmt_shape(image)}")
        if isinstance(text, str):
            if self.vocabulary is None:
                raise ValueError("text: raw text needs a vocabulary; pass (tokens, lengths)")
            tokens, lengths = self.vocabulary.encode([text])
        else:
            tokens, lengths = text
        device = image.device
        out = self.compose(
            image, tokens.to(device), lengths.to(device), return_attention=return_attention
        )
        query = out.embedding if isinstance(out, CompositionOutput) else out
        if gallery.dim() == 2:
            if gallery.shape[1] != self.embedding_dim:
                raise ValueError(
                    f"gallery: expected embeddings (G, {self.embedding_dim}), got "
                    f"{fmt_shape(gallery)}"
                )
            embeddings = gallery.to(device=device, dtype=query.dtype)
        elif gallery.dim() == 4:
            embeddings = self.embed_gallery(gallery, batch_size)
        else:
            raise ValueError(
                f"gallery: expected images (G, 3, H, W) or embeddings (G, E), got "
                f"{fmt_shape(gallery)}"
            )
        if embeddings.shape[0] == 0:
            raise ValueError("gallery: expected at least one item, got an empty gallery")
        scores = (embeddings @ query[0]).float()
        if exclude is not None:
            scores[exclude] = float("-inf")
        k = min(k, scores.shape[0] - (exclude is not None))
        # Stable descending sort: equal scores keep gallery order (lower index first).
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        attention = out.attention if isinstance(out, CompositionOutput) else None
        return SearchResult(order, scores[order], attention)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``vocabulary.json`` (if any) and ``model.pt`` to ``directory``.

        The weights are a plain state dict of tensors, loadable with
        ``torch.load(weights_only=True)`` (no code runs on load). Each file is written
        atomically (temporary file, then rename).

        Returns:
            The directory path.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = json.dumps(self.config.to_dict(), indent=2).encode()
        _atomic_write_bytes(path / CONFIG_FILE, lambda f: f.write(config))
        if self.vocabulary is not None:
            self.vocabulary.save(path / VOCABULARY_FILE)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        _atomic_write_bytes(path / WEIGHTS_FILE, lambda f: torch.save(state, f))
        return path

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        backbone: FeaturePyramid | None = None,
        map_location: str | torch.device = "cpu",
    ) -> VAL:
        """Rebuild a model written by :meth:`save_pretrained` (weights loaded safely).

        Args:
            directory: The directory given to :meth:`save_pretrained`.
            backbone: The backbone module, required when the config says ``"custom"``.
            map_location: Where to load the weights.

        Raises:
            FileNotFoundError: If the directory lacks ``config.json`` or ``model.pt``.
        """
        path = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"directory: {path} has no {name}; not a saved VAL model")
        config = VALConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        vocabulary = (
            Vocabulary.load(path / VOCABULARY_FILE) if (path / VOCABULARY_FILE).is_file() else None
        )
        model = cls(config, vocabulary=vocabulary, backbone=backbone)
        state = torch.load(path / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
        return model
