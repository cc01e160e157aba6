"""The reference end-to-end VAL model, assembled only from valfusion's public parts.

``image pyramid -> one composer per level -> global average pooling -> L2-normalised level
embeddings -> concatenation``. Every piece is a public class, so the same model can be
built by hand in user code; the composer is chosen by name, so VAL and its baselines are
compared in one harness.

This module holds the model itself (composition, losses, the forward pass); what it is
made of as data is in :mod:`~valfusion.models.config`, its outputs in
:mod:`~valfusion.models.outputs`, the backbone it builds in
:mod:`~valfusion.models.backbones`, search in :mod:`~valfusion.models.search`, the saved
folder in :mod:`~valfusion.models.serialization` and its Hugging Face Hub side in
:mod:`~valfusion.models.hub`. The names below are re-exported so that
``from valfusion.models.val import VAL, VALConfig, ...`` keeps working.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import torch
import torch.nn.functional as F
from einops import reduce
from torch import Tensor, nn

from valfusion._validation import (
    check_floating,
    check_ndim,
    check_positive_int,
    check_same_batch,
    check_size,
    check_tokens,
    fmt_shape,
)
from valfusion.encoders import (
    FeaturePyramid,
    HFTextEncoder,
    LSTMTextEncoder,
    OpenCLIPTextEncoder,
    TextEncoder,
    Vocabulary,
    build_text_encoder,
    check_images,
)
from valfusion.encoders.text_encoder_spec import parse_text_encoder_spec
from valfusion.layers import MultiLevelComposer
from valfusion.losses import HierarchicalMatchingLoss, HierarchicalMatchingOutput
from valfusion.metrics._checks import check_finite
from valfusion.models.backbones import build_backbone, check_backbone, initial_weights
from valfusion.models.config import BACKBONES, VALConfig

# The file names lived here before the split: re-exported for the CLI and user code.
from valfusion.models.config import CONFIG_FILE as CONFIG_FILE
from valfusion.models.config import LEGACY_WEIGHTS_FILE as LEGACY_WEIGHTS_FILE
from valfusion.models.config import VOCABULARY_FILE as VOCABULARY_FILE
from valfusion.models.config import WEIGHTS_FILE as WEIGHTS_FILE
from valfusion.models.config import WEIGHTS_FILES as WEIGHTS_FILES
from valfusion.models.hub import is_repo_id, load_from_hub, push_model_to_hub
from valfusion.models.outputs import CompositionOutput, SearchResult
from valfusion.models.search import (
    check_exclude,
    check_gallery,
    embed_in_batches,
    evaluation_mode,
    query_image,
    query_text,
    rank_gallery,
    warn_if_unknown,
)
from valfusion.models.serialization import (
    load_weights,
    read_pretrained,
    text_encoder_architecture,
    write_pretrained,
)

__all__ = ["BACKBONES", "VAL", "CompositionOutput", "SearchResult", "VALConfig"]


def _pool_levels(maps: Sequence[Tensor]) -> list[Tensor]:
    """Global average pooling then L2 normalisation of each level: ``(B, C, H, W) -> (B, C)``.

    Half-precision maps (autocast) are pooled in float32; float32 and float64 keep theirs.
    """
    return [
        F.normalize(
            reduce(m.to(torch.promote_types(m.dtype, torch.float32)), "b c h w -> b c", "mean"),
            dim=-1,
        )
        for m in maps
    ]


def _concat_levels(levels: Sequence[Tensor]) -> Tensor:
    """Concatenate unit-norm level embeddings, scaled by ``1/sqrt(L)`` so the result is unit norm.

    The cosine of two such embeddings is then the mean of the per-level cosines, which is
    how the official evaluation combines levels.
    """
    return torch.cat(list(levels), dim=-1) / math.sqrt(len(levels))


def _check_text_encoder(config: VALConfig, encoder: object) -> TextEncoder:
    """A transformer text encoder must be the kind ``config.text_encoder`` names, ``text_dim``
    wide and ``vocab_size`` ids long, so that :meth:`VAL.from_pretrained` rebuilds it."""
    kind = parse_text_encoder_spec(config.text_encoder).kind
    cls: type[TextEncoder] = HFTextEncoder if kind == "hf" else OpenCLIPTextEncoder
    if not isinstance(encoder, cls):
        raise ValueError(
            f"text_encoder: config.text_encoder={config.text_encoder!r} means a "
            f"{cls.__name__}, got {type(encoder).__name__}"
        )
    if encoder.output_dim != config.text_dim:
        raise ValueError(
            f"text_encoder: expected output_dim == config.text_dim ({config.text_dim}), got "
            f"{encoder.output_dim}"
        )
    if encoder.vocab_size != config.vocab_size:
        raise ValueError(
            f"vocab_size: config.vocab_size is {config.vocab_size} but the text encoder "
            f"{config.text_encoder!r} has {encoder.vocab_size} token ids; set "
            f"vocab_size={encoder.vocab_size}"
        )
    return encoder


class VAL(nn.Module):
    """Image search with text feedback: VAL (Chen, Gong, Bazzani, CVPR 2020) and baselines.

    For a reference image ``x_r`` and text ``s``, the pyramid gives maps ``F_r^l``
    ``(B, C_l, H_l, W_l)``, the text encoder ``t`` ``(B, D)``, and composer ``l`` the
    composed map ``F_o^l``. Each level is pooled and normalised,
    ``f_o^l = GAP(F_o^l) / ||GAP(F_o^l)||`` ``(B, C_l)``, and the retrieval embedding is
    ``[f_o^1; ...; f_o^L] / sqrt(L)`` ``(B, E)``, ``E = sum_l C_l`` (unit norm, so its
    cosine with a target is the mean of the level cosines). Gallery images go through the
    same pyramid without composition.

    The parts are public: ``backbone`` (a :class:`~valfusion.encoders.FeaturePyramid`),
    ``text_encoder`` (a :class:`~valfusion.encoders.TextEncoder`: the
    :class:`~valfusion.encoders.LSTMTextEncoder` by default, or the transformer
    ``config.text_encoder`` names), ``composer``
    (:meth:`MultiLevelComposer.build <valfusion.layers.MultiLevelComposer.build>`),
    ``loss`` (:class:`~valfusion.losses.HierarchicalMatchingLoss`) and, with
    ``semantic_dim``, the linear heads ``semantic_query`` ``E -> S`` and ``semantic_text``
    ``D -> S``.

    Args:
        config: The model configuration.
        vocabulary: The :class:`~valfusion.encoders.Vocabulary` of the ``"lstm"`` text
            encoder (kept with the model so :meth:`tokenize` and :meth:`search` accept raw
            text and :meth:`save_pretrained` stores it); transformer encoders bring their
            own tokenizer.
        backbone: A :class:`~valfusion.encoders.FeaturePyramid` to use instead of
            building ``config.backbone`` (with ``config.backbone_weights``): required when
            ``config.backbone == "custom"``; otherwise it must be the module the config
            names (e.g. ``TorchvisionResNetPyramid("resnet50", weights=...)``).
        text_encoder: A transformer :class:`~valfusion.encoders.TextEncoder` to use
            instead of building ``config.text_encoder``: it must be of the kind the config
            names, with ``output_dim == config.text_dim`` and ``vocab_size ==
            config.vocab_size``. Not for ``"lstm"``, which is built from the fields.

    Raises:
        ValueError: If the vocabulary size differs from ``config.vocab_size`` (or a
            vocabulary is given to a transformer text encoder), the backbone or text
            encoder does not fit the config, ``config.backbone_weights`` is not
            ``"imagenet"`` or an existing file, ``config.level_weights`` does not have one
            weight per level, or a part rejects its options.

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
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, VALConfig):
            raise ValueError(f"config: expected a VALConfig, got {type(config).__name__}")
        lstm = config.text_encoder == "lstm"
        if lstm and text_encoder is not None:
            raise ValueError(
                "text_encoder: the 'lstm' text encoder is built from the config's fields; "
                "pass a transformer encoder with config.text_encoder naming its kind"
            )
        if vocabulary is not None and not lstm:
            raise ValueError(
                f"vocabulary: only the 'lstm' text encoder reads a Vocabulary; "
                f"{config.text_encoder!r} brings its own tokenizer"
            )
        if vocabulary is not None:
            if not isinstance(vocabulary, Vocabulary):
                raise ValueError(
                    f"vocabulary: expected a valfusion.encoders.Vocabulary or None, got "
                    f"{type(vocabulary).__name__}"
                )
            if len(vocabulary) != config.vocab_size:
                raise ValueError(
                    f"vocabulary: has {len(vocabulary)} tokens but config.vocab_size is "
                    f"{config.vocab_size}"
                )
        self.config = config
        self.vocabulary = vocabulary
        self.backbone = (
            build_backbone(config, initial_weights(config))
            if backbone is None
            else check_backbone(config, backbone)
        )
        num_levels = self.backbone.num_levels
        if config.level_weights is not None and len(config.level_weights) != num_levels:
            raise ValueError(
                f"level_weights: expected one weight per backbone level ({num_levels}), got "
                f"{len(config.level_weights)}: {config.level_weights}"
            )
        self.text_encoder: TextEncoder = (
            LSTMTextEncoder(
                config.vocab_size,
                word_dim=config.word_dim,
                hidden_dim=config.text_hidden_dim,
                out_dim=config.text_dim,
                dropout=config.text_dropout,
                vocabulary=vocabulary,
            )
            if lstm
            else _check_text_encoder(
                config,
                build_text_encoder(config.text_encoder, config.text_dim, **config.text_encoder_kwargs)
                if text_encoder is None
                else text_encoder,
            )
        )
        # Batch norm in the text encoder needs two texts per batch in training mode.
        self._text_batch_norm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.text_encoder.modules()
        )
        # "val_official" ties each level to one feature-map size; queries are checked
        # against these sizes before any computation.
        self._composer_sizes: list[tuple[int, int]] | None = (
            self.backbone.feature_sizes(config.image_size)
            if config.composer == "val_official"
            else None
        )
        self.composer = MultiLevelComposer.build(
            config.composer,
            self.backbone.channels,
            config.text_dim,
            feature_sizes=self._composer_sizes,
            **config.composer_kwargs,
        )
        self.embedding_dim = sum(self.backbone.channels)
        self.semantic_query: nn.Linear | None = None
        self.semantic_text: nn.Linear | None = None
        if config.semantic_dim is not None:
            # Visual-semantic space: composed embedding and side-information text are both
            # projected into it (the side information shares the text encoder).
            self.semantic_query = nn.Linear(self.embedding_dim, config.semantic_dim)
            self.semantic_text = nn.Linear(config.text_dim, config.semantic_dim)
        self.loss = HierarchicalMatchingLoss(
            form=config.loss,
            level_weights=config.level_weights,
            semantic_weight=config.semantic_weight,
            temperature=config.temperature,
            learnable_temperature=config.learnable_temperature,
            margin=config.margin,
        )

    # ------------------------------------------------------------------ validation

    def _check_text(
        self,
        tokens: object,
        lengths: object,
        tokens_name: str,
        lengths_name: str,
        *,
        inference: bool = False,
    ) -> None:
        """Token ids ``(B, T)`` in ``[0, V)`` and lengths ``(B,)`` in ``[1, T]``.

        ``inference=True``: the caller runs in eval mode, so one text is fine.
        """
        tokens, _ = check_tokens(
            tokens, lengths, self.text_encoder.vocab_size, tokens_name, lengths_name
        )
        if (
            not inference
            and self._text_batch_norm
            and self.text_encoder.training
            and tokens.shape[0] == 1
        ):
            raise ValueError(
                f"{tokens_name}: batch size 1 in training mode, but the text encoder's batch "
                f"norm needs at least 2 texts; call model.eval() to encode single queries"
            )

    def _check_query(
        self,
        images: object,
        tokens: object,
        lengths: object,
        names: tuple[str, str, str] = ("images", "tokens", "lengths"),
        *,
        inference: bool = False,
    ) -> None:
        """Reference images, token ids and lengths of one batch of queries."""
        images_name, tokens_name, lengths_name = names
        images = check_images(images, images_name)
        self._check_text(tokens, lengths, tokens_name, lengths_name, inference=inference)
        assert isinstance(tokens, Tensor)
        check_same_batch(images, images_name, tokens, tokens_name)
        if self._composer_sizes is not None:
            sizes = self.backbone.feature_sizes(tuple(images.shape[2:]))
            if sizes != self._composer_sizes:
                raise ValueError(
                    f"{images_name}: the 'val_official' composer is tied to image_size="
                    f"{self.config.image_size} (feature maps {self._composer_sizes}), got shape "
                    f"{fmt_shape(images)} (feature maps {sizes})"
                )

    def _check_semantic_head(self, name: str) -> None:
        if self.semantic_text is None:
            raise ValueError(
                f"{name}: this model has no side-information head (config.semantic_dim is "
                f"None); build it with semantic_dim=S to use side information"
            )

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ computation

    def _encode_queries(
        self, images: Tensor, tokens: Tensor, lengths: Tensor, return_attention: bool
    ) -> CompositionOutput:
        maps = self.backbone(images)
        text = self.text_encoder(tokens, lengths)
        attention = None
        if return_attention:
            composed, attention = self.composer(maps, text, return_attention=True)
        else:
            composed = self.composer(maps, text)
        levels = _pool_levels(composed)
        return CompositionOutput(_concat_levels(levels), levels, attention)

    def _encode_targets(self, images: Tensor) -> CompositionOutput:
        levels = _pool_levels(self.backbone(images))
        return CompositionOutput(_concat_levels(levels), levels)

    # ------------------------------------------------------------------ encoding

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids of texts, by the text encoder's own tokenizer (on the CPU).

        The vocabulary for the ``"lstm"`` encoder, the transformer's tokenizer otherwise:
        ``encode_text(*model.tokenize(texts))`` encodes raw text with any encoder.

        Args:
            texts: ``B >= 1`` strings.

        Returns:
            ``(tokens (B, T) long, lengths (B,) long)``, rows right-padded.

        Raises:
            ValueError: If ``texts`` is not a non-empty sequence of strings, or the LSTM
                model has no vocabulary.
        """
        return self.text_encoder.tokenize(texts)

    def encode_text(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Text feature ``t`` of the modification texts.

        Args:
            tokens: ``(B, T)`` integer token ids in ``[0, V)`` (:meth:`tokenize`).
            lengths: ``(B,)`` integer valid lengths, each in ``[1, T]``.

        Returns:
            ``(B, D)`` text features.

        Raises:
            ValueError: Naming the argument, if a shape, dtype or value is out of range.
        """
        self._check_text(tokens, lengths, "tokens", "lengths")
        return self.text_encoder(tokens, lengths)

    @overload
    def encode_image(self, images: Tensor, *, return_levels: Literal[False] = False) -> Tensor: ...

    @overload
    def encode_image(
        self, images: Tensor, *, return_levels: Literal[True]
    ) -> CompositionOutput: ...

    @overload
    def encode_image(
        self, images: Tensor, *, return_levels: bool = False
    ) -> Tensor | CompositionOutput: ...

    def encode_image(
        self, images: Tensor, *, return_levels: bool = False
    ) -> Tensor | CompositionOutput:
        """Gallery / target embedding of images, without composition.

        ``f_t = [f_t^1; ...; f_t^L] / sqrt(L)`` with ``f_t^l = GAP(F_t^l) / ||GAP(F_t^l)||``.

        Args:
            images: ``(B, 3, H, W)`` float images.
            return_levels: Also return the per-level embeddings.

        Returns:
            ``(B, E)`` unit-norm embeddings, or a :class:`CompositionOutput` with the
            levels ``(B, C_l)`` when ``return_levels=True``.

        Raises:
            ValueError: If ``images`` has the wrong rank, channel count or dtype.
        """
        check_images(images, "images")
        out = self._encode_targets(images)
        return out if return_levels else out.embedding

    @overload
    def compose(
        self,
        images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        *,
        return_levels: Literal[False] = False,
        return_attention: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def compose(
        self,
        images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        *,
        return_levels: Literal[True],
        return_attention: bool = False,
    ) -> CompositionOutput: ...

    @overload
    def compose(
        self,
        images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        *,
        return_levels: bool = False,
        return_attention: Literal[True],
    ) -> CompositionOutput: ...

    @overload
    def compose(
        self,
        images: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        *,
        return_levels: bool = False,
        return_attention: bool = False,
    ) -> Tensor | CompositionOutput: ...

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

        ``f_o = [f_o^1; ...; f_o^L] / sqrt(L)``, ``f_o^l`` the normalised GAP of
        ``composer_l(F_r^l, t)``. All inputs are checked before anything is computed.

        Args:
            images: ``(B, 3, H, W)`` float reference images (for ``"val_official"``, of
                ``config.image_size``).
            tokens: ``(B, T)`` integer token ids in ``[0, V)`` (:meth:`tokenize`).
            lengths: ``(B,)`` integer valid lengths, each in ``[1, T]``.
            return_levels: Also return the per-level embeddings ``(B, C_l)``.
            return_attention: Also return each level's attention maps.

        Returns:
            ``(B, E)`` unit-norm query embeddings, or a :class:`CompositionOutput` when
            levels or attention are asked for.

        Raises:
            ValueError: Naming the argument, if ``images`` has the wrong rank, channel
                count, dtype (or size, for ``"val_official"``), ``tokens`` holds ids out of
                the vocabulary's range, ``lengths`` is 0 or longer than ``T``, or the batch
                sizes differ.
        """
        self._check_query(images, tokens, lengths)
        out = self._encode_queries(images, tokens, lengths, return_attention)
        return out if return_levels or return_attention else out.embedding

    def forward(self, images: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Same as :meth:`compose`: ``(B, 3, H, W), (B, T), (B,) -> (B, E)``.

        Args:
            images: ``(B, 3, H, W)`` reference images.
            tokens: ``(B, T)`` token ids.
            lengths: ``(B,)`` valid lengths.

        Returns:
            ``(B, E)`` unit-norm query embeddings.
        """
        return self.compose(images, tokens, lengths)

    def encode_side_info(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Side information (tags, captions) in the visual-semantic space.

        ``g_s = W_text · text_encoder(tokens, lengths) + b`` (the side information shares
        the text encoder with the modification text).

        Args:
            tokens: ``(B, T)`` integer token ids in ``[0, V)``.
            lengths: ``(B,)`` integer valid lengths in ``[1, T]``.

        Returns:
            ``(B, S)`` side-information embeddings.

        Raises:
            ValueError: If the model was built with ``semantic_dim=None``, or an input is
                malformed (naming it).
        """
        self._check_semantic_head("semantic_dim")
        self._check_text(tokens, lengths, "tokens", "lengths")
        assert self.semantic_text is not None
        return self.semantic_text(self.text_encoder(tokens, lengths))

    def project_semantic(self, composed: Tensor) -> Tensor:
        """Composed embeddings into the visual-semantic space: ``g_o = W_query f_o + b``.

        Args:
            composed: ``(B, E)`` query embeddings from :meth:`compose`.

        Returns:
            ``(B, S)``.

        Raises:
            ValueError: If the model was built with ``semantic_dim=None``, or ``composed``
                is not a float ``(B, E)`` tensor.
        """
        self._check_semantic_head("semantic_dim")
        composed = check_ndim(composed, "composed", 2, "(B, E)")
        check_floating(composed, "composed")
        check_size(composed, "composed", 1, self.embedding_dim, "embedding size E")
        assert self.semantic_query is not None
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

        ``L = sum_l w_l P(f_o^l, f_t^l) + lambda P(g_o, g_s)``: visual-visual at every level
        between composed and target embeddings, plus, when side information is given,
        visual-semantic between the projected composed embedding ``g_o`` and the encoded
        side information ``g_s`` of the target. ``P`` is the configured pairwise loss
        with the other items of the batch as negatives.

        Args:
            reference_images: ``(B, 3, H, W)``.
            tokens: ``(B, T)`` modification-text ids.
            lengths: ``(B,)``.
            target_images: ``(B, 3, H', W')``.
            side_tokens: ``(B, T')`` side-information ids of the targets, or ``None``.
            side_lengths: ``(B,)``, given with ``side_tokens``.

        Returns:
            A :class:`~valfusion.losses.HierarchicalMatchingOutput` (total, per level,
            semantic).

        Raises:
            ValueError: Naming the argument, on a malformed input or batch-size mismatch,
                when only one of ``side_tokens``/``side_lengths`` is given, or when side
                information is given to a model without ``semantic_dim``.
        """
        self._check_query(
            reference_images, tokens, lengths, ("reference_images", "tokens", "lengths")
        )
        check_images(target_images, "target_images")
        check_same_batch(reference_images, "reference_images", target_images, "target_images")
        if (side_tokens is None) != (side_lengths is None):
            missing = "side_lengths" if side_lengths is None else "side_tokens"
            raise ValueError(f"{missing}: give side_tokens and side_lengths together")
        if side_tokens is not None:
            self._check_semantic_head("side_tokens")
            self._check_text(side_tokens, side_lengths, "side_tokens", "side_lengths")
            check_same_batch(reference_images, "reference_images", side_tokens, "side_tokens")

        query = self._encode_queries(reference_images, tokens, lengths, return_attention=False)
        target = self._encode_targets(target_images)
        composed_semantic = side = None
        if side_tokens is not None and side_lengths is not None:
            assert self.semantic_text is not None and self.semantic_query is not None
            side = self.semantic_text(self.text_encoder(side_tokens, side_lengths))
            composed_semantic = self.semantic_query(query.embedding)
        return self.loss(query.levels, target.levels, composed_semantic, side)

    # ------------------------------------------------------------------ search

    @torch.no_grad()
    def embed_gallery(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Embed gallery images in batches, in evaluation mode.

        Batch norm uses its running statistics and dropout is off, so an embedding does
        not depend on the batch it was computed in and the model's statistics are left
        untouched; every submodule's train/eval mode is restored afterwards. Chunks are
        moved to the model's device.

        Args:
            images: ``(G, 3, H, W)`` float images, ``G >= 1`` (any device).
            batch_size: Images per forward pass.

        Returns:
            ``(G, E)`` unit-norm embeddings, as :meth:`encode_image` in eval mode, on the
            model's device.

        Raises:
            ValueError: If ``images`` is malformed or empty, or ``batch_size`` is not a
                positive integer.
        """
        device = self._device()
        with evaluation_mode(self):
            return embed_in_batches(
                lambda chunk: self._encode_targets(chunk).embedding, images, batch_size, device
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

        Scores are cosine similarities ``cos(f_o, f_g)`` between the query embedding and
        each gallery embedding, computed and ranked by :mod:`valfusion.metrics.ranking`
        exactly as :func:`~valfusion.metrics.recall_at_k` does: by score, descending, equal
        scores by lower gallery index. Runs in evaluation mode (as :meth:`embed_gallery`; each
        submodule's mode is restored afterwards); inputs are moved to the model's device.

        Args:
            image: ``(3, H, W)`` or ``(1, 3, H, W)`` float reference image.
            text: The modification text (tokenized by :meth:`tokenize`; the LSTM needs
                the model's vocabulary), or a pair ``(tokens (1, T), lengths (1,))`` such
                as ``model.tokenize([text])``.
            gallery: Gallery images ``(G, 3, H, W)`` or precomputed embeddings ``(G, E)``
                from :meth:`encode_image` / :meth:`embed_gallery`.
            k: How many results; clipped to the number of gallery items left after
                ``exclude``.
            exclude: A gallery index in ``[0, G)`` to leave out (the reference image itself).
            return_attention: Also return the query's attention maps.
            batch_size: Batch size for embedding gallery images.

        Returns:
            A :class:`SearchResult` with ``(k,)`` indices and scores.

        Raises:
            ValueError: Naming the argument, if ``image`` is not one image, ``text`` is
                raw text without a vocabulary or a malformed pair, ``gallery`` is neither
                ``(G, 3, H, W)`` images nor ``(G, E)`` embeddings or is empty, ``image`` or
                ``gallery`` holds NaN or inf, ``exclude`` is not an index of the gallery,
                or ``k`` is not a positive integer.

        Warns:
            UserWarning: Naming the text, if it has no words or every word of it is
                unknown to the vocabulary (the results then ignore what it says).
        """
        check_positive_int(k, "k")
        image = query_image(image)
        lstm_without_vocabulary = self.config.text_encoder == "lstm" and self.vocabulary is None
        tokens, lengths = query_text(text, None if lstm_without_vocabulary else self.tokenize)
        self._check_query(image, tokens, lengths, ("image", "text[0]", "text[1]"), inference=True)
        check_finite(image.flatten(1), "image")
        warn_if_unknown(text, tokens, lengths, self.vocabulary, stacklevel=3)
        gallery = check_gallery(gallery, self.embedding_dim)
        exclude = check_exclude(exclude, gallery.shape[0])

        device = self._device()
        with evaluation_mode(self):
            query = self._encode_queries(
                image.to(device), tokens.to(device), lengths.to(device), return_attention
            )
            if gallery.dim() == 4:
                embeddings = self.embed_gallery(gallery, batch_size)
            else:
                embeddings = gallery.to(device)
        indices, scores = rank_gallery(query.embedding, embeddings, k, exclude)
        return SearchResult(indices, scores, query.attention)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``vocabulary.json`` (if any), ``text_encoder/`` (if any) and
        the weights to ``directory``.

        ``text_encoder/`` holds a transformer text encoder's architecture (its
        configuration and tokenizer files, :meth:`TextEncoder.save_architecture
        <valfusion.encoders.TextEncoder.save_architecture>`), so that
        :meth:`from_pretrained` rebuilds it without the original folder or a download.

        The weights are a state dict of CPU tensors in ``model.safetensors`` (the Hugging
        Face format: a JSON header and raw bytes, nothing to unpickle) when the optional
        ``safetensors`` package is installed (``demo`` extra), else in ``model.pt``
        (``torch.save``, loadable with ``torch.load(path, weights_only=True)``). Tied
        weights are saved once per name. Each file is written atomically (temporary file,
        then rename); the other weights file and a ``vocabulary.json`` or ``text_encoder/``
        left by an earlier save are removed, so that the folder holds exactly this model.

        Args:
            directory: Created if missing; existing files of the same names are replaced.

        Returns:
            The directory path.
        """
        return write_pretrained(
            directory,
            self.config,
            self.vocabulary,
            self.state_dict(),
            text_encoder=None if self.config.text_encoder == "lstm" else self.text_encoder,
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        backbone: FeaturePyramid | None = None,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> VAL:
        """Rebuild a model written by :meth:`save_pretrained`, in evaluation mode.

        ``directory`` is a local folder, or a Hugging Face Hub repo id ``"owner/name"``
        (a string of that form that is not an existing path) when the optional
        ``huggingface_hub`` package is installed (``hub`` extra): the repo's
        ``config.json``, weights and ``vocabulary.json`` are then fetched through the Hub's
        cache (``huggingface_hub``'s ``ModelHubMixin.from_pretrained``; nothing is
        downloaded that is already cached, and nothing at all with ``HF_HUB_OFFLINE=1`` or
        ``local_files_only=True``) and loaded as a local folder. A local folder never uses
        the network or ``huggingface_hub``.

        The weights are ``model.safetensors`` when the folder has it (it needs the
        ``safetensors`` package), else ``model.pt`` (folders written before, or without
        ``safetensors``), read with ``torch.load(weights_only=True)``; opening either never
        runs code. They are checked against the configuration before they are loaded strictly.
        The backbone is built with random weights (``config.backbone_weights`` is not read:
        the saved weights replace them), and a transformer text encoder is rebuilt from
        ``text_encoder/`` (its configuration and tokenizer files), so nothing is downloaded
        and the folder it was first loaded from is not needed.
        As with Hugging Face models, the result is in eval mode; call ``.train()`` to
        fine-tune.

        Args:
            directory: The directory given to :meth:`save_pretrained`, or a Hub repo id
                ``"owner/name"`` (see :meth:`push_to_hub`).
            backbone: The backbone module, required when the config says ``"custom"``
                (its weights are then overwritten by the saved ones).
            map_location: Where to load the weights.
            revision: Hub only: branch, tag or commit (default: ``main``).
            cache_dir: Hub only: the cache folder (default: ``HF_HUB_CACHE``).
            force_download: Hub only: download again even if cached.
            local_files_only: Hub only: use the cache, never the network.
            token: Hub only: access token for private repos (default: the saved login).

        Returns:
            The model, in eval mode, with the saved vocabulary (if one was saved).

        Raises:
            FileNotFoundError: If the directory lacks ``config.json``, both
                ``model.safetensors`` and ``model.pt``, or the ``text_encoder/`` folder of a
                transformer text encoder; for a repo id, if the Hub (or,
                offline, its cache) has no such model.
            ImportError: If ``directory`` is a repo id and ``huggingface_hub`` is not
                installed (``pip install 'valfusion[hub]'``), or the text encoder's library
                (``transformers``, ``open_clip``) or the backbone's (timm) is missing.
            ValueError: Naming the file, if ``config.json`` is not a valid configuration,
                or the weights file is empty, truncated or corrupted, is refused as unsafe (a
                pickle that would run code: nothing in it is executed), or does not fit
                the configuration (missing or unexpected entries, other shapes, integer
                values for floating-point weights, NaN or inf); naming the option, if a
                Hub-only option is given with a local folder.
        """
        if is_repo_id(directory):
            model: VAL = load_from_hub(
                directory,
                lambda folder: cls.from_pretrained(
                    folder, backbone=backbone, map_location=map_location
                ),
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
            return model
        hub_only = {
            "revision": revision is not None,
            "cache_dir": cache_dir is not None,
            "force_download": force_download,
            "local_files_only": local_files_only,
            "token": token is not None,
        }
        given = [name for name, used in hub_only.items() if used]
        if given:
            raise ValueError(
                f"{given[0]}: an option for a Hugging Face Hub repo id, but directory "
                f"{os.fspath(directory)!r} is read as a local folder"
            )
        config, vocabulary, weights = read_pretrained(directory)
        architecture = text_encoder_architecture(directory, config)
        text_encoder = None
        if architecture is not None:
            text_encoder = build_text_encoder(
                config.text_encoder,
                config.text_dim,
                architecture=architecture,
                **config.text_encoder_kwargs,
            )
        if backbone is None and config.backbone != "custom":
            # Random initial weights: the saved ones replace them (config.backbone_weights
            # may name a file of another machine).
            backbone = build_backbone(config)
        model = cls(config, vocabulary=vocabulary, backbone=backbone, text_encoder=text_encoder)
        model.load_state_dict(load_weights(weights, model.state_dict(), map_location))
        return model.eval()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload VAL model with valfusion",
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Upload the model to a Hugging Face Hub repo (needs the ``hub`` extra).

        The repo is created if it does not exist; one commit adds what :meth:`save_pretrained`
        writes (``config.json``, ``model.safetensors``, ``vocabulary.json``) and a model card
        (``README.md``, with ``library_name: valfusion``), through ``huggingface_hub``'s
        ``ModelHubMixin.push_to_hub``. :meth:`from_pretrained` loads it back from the repo id.

        Args:
            repo_id: ``"owner/name"``.
            commit_message: The commit's message.
            private: Whether a new repo is private (``None``: the account's default).
            token: Access token with write access (default: the saved login).
            branch: Branch to push to (default: ``main``).
            create_pr: Open a pull request instead of committing to the branch.

        Returns:
            The URL of the commit.

        Raises:
            ValueError: If ``repo_id`` is not an ``"owner/name"`` string.
            ImportError: If ``huggingface_hub`` is not installed (``pip install
                'valfusion[hub]'``).
        """
        return push_model_to_hub(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            branch=branch,
            create_pr=create_pr,
        )
