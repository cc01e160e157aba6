"""Search with a trained model: embedding a gallery in batches and ranking it for one query.

The checks of a query's parts (one image, a text or its token ids, a gallery of images or
embeddings, an excluded index) and the ranking itself, which is
:mod:`valfusion.metrics.ranking`'s: the package's one rule, shared with
:func:`~valfusion.metrics.recall_at_k`. :meth:`VAL.search <valfusion.models.VAL.search>` and
:meth:`VAL.embed_gallery <valfusion.models.VAL.embed_gallery>` compose these with the model's
encoders.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from valfusion._validation import check_floating, check_positive_int, check_size, fmt_shape
from valfusion.encoders import Vocabulary, check_images, tokenize
from valfusion.metrics._checks import check_finite
from valfusion.metrics.ranking import chunk_scores, mask_excluded, prepare_gallery, topk_by_rule

__all__ = [
    "check_exclude",
    "check_gallery",
    "embed_in_batches",
    "evaluation_mode",
    "query_image",
    "query_text",
    "rank_gallery",
    "warn_if_unknown",
]


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run a block with ``module`` in eval mode, then restore every submodule's own flag.

    Restoring per submodule keeps parts that were deliberately in eval mode (frozen
    backbone stages) as they were.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def embed_in_batches(
    encode: Callable[[Tensor], Tensor], images: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    """``encode`` over ``images`` in chunks of ``batch_size``, each moved to ``device``.

    Args:
        encode: ``(b, 3, H, W) -> (b, E)``.
        images: ``(G, 3, H, W)`` float images, ``G >= 1`` (any device).
        batch_size: Images per call of ``encode``.
        device: Where each chunk is encoded.

    Returns:
        ``(G, E)``, the chunks' outputs concatenated.

    Raises:
        ValueError: If ``images`` is malformed or empty, or ``batch_size`` is not a
            positive integer.
    """
    check_images(images, "images")
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one gallery image, got shape (0, ...)")
    check_positive_int(batch_size, "batch_size")
    return torch.cat([encode(chunk.to(device)) for chunk in images.split(batch_size)], dim=0)


def query_image(image: object) -> Tensor:
    """One reference image as a batch of one: ``(3, H, W)`` or ``(1, 3, H, W) -> (1, 3, H, W)``.

    Raises:
        ValueError: Naming ``image``, if it is not a tensor of one image.
    """
    if not isinstance(image, Tensor) or image.dim() not in (3, 4):
        got = fmt_shape(image) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image: expected one image (3, H, W) or (1, 3, H, W), got {got}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.shape[0] != 1:
        raise ValueError(
            f"image: expected one image (3, H, W) or (1, 3, H, W), got shape {fmt_shape(image)}"
        )
    return image


def query_text(
    text: object, tokenize: Callable[[list[str]], tuple[Tensor, Tensor]] | None
) -> tuple[Tensor, Tensor]:
    """Token ids ``(1, T)`` and lengths ``(1,)`` of a query text, or the pair as given.

    Args:
        text: A string (tokenized with ``tokenize``) or a pair ``(tokens, lengths)``.
        tokenize: The model's tokenizer (:meth:`VAL.tokenize
            <valfusion.models.VAL.tokenize>`), or ``None`` when it has none (an LSTM
            without a vocabulary).

    Raises:
        ValueError: Naming ``text``, if it is raw text without a tokenizer or neither a
            string nor a pair (the pair's contents are checked by the model).
    """
    if isinstance(text, str):
        if tokenize is None:
            raise ValueError(
                "text: raw text needs the model's vocabulary (none was given); pass "
                "(tokens, lengths) instead"
            )
        return tokenize([text])
    if isinstance(text, (tuple, list)) and len(text) == 2:
        tokens, lengths = text
        return tokens, lengths
    raise ValueError(
        f"text: expected a str or a pair (tokens (1, T), lengths (1,)), got {type(text).__name__}"
    )


def warn_if_unknown(
    text: str | tuple[Tensor, Tensor],
    tokens: Tensor,
    lengths: Tensor,
    vocabulary: Vocabulary | None,
    *,
    stacklevel: int,
) -> None:
    """Warn when no word of the query text is in the vocabulary: the results then ignore
    the text (every word is the same unknown token).

    Args:
        text: The text as the user gave it (named in the warning when it is a string).
        tokens: ``(1, T)`` its token ids.
        lengths: ``(1,)`` its length.
        vocabulary: The model's vocabulary; ``None`` warns about nothing.
        stacklevel: As for :func:`warnings.warn`, counted from the caller of this function
            (``1``: the caller's line), so that the warning points at the user's call.
    """
    if vocabulary is None:
        return
    ids = tokens[0, : int(lengths[0])]
    if not bool((ids == vocabulary.unk_id).all()):
        return
    size = len(vocabulary)
    if isinstance(text, str) and not tokenize(text):
        message = f"text {text!r} has no words: the results ignore the text"
    else:
        named = f"text {text!r}" if isinstance(text, str) else "text (the given token ids)"
        message = (
            f"{named}: every word is unknown to the model's vocabulary ({size} tokens), "
            "so the results ignore what the text says"
        )
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def check_gallery(gallery: object, embedding_dim: int) -> Tensor:
    """Gallery images ``(G, 3, H, W)`` or embeddings ``(G, E)``, ``G >= 1``, finite.

    Returns:
        ``gallery``, unchanged.

    Raises:
        ValueError: Naming ``gallery``, if it is neither, is empty, or holds NaN or inf.
    """
    if not isinstance(gallery, Tensor) or gallery.dim() not in (2, 4):
        got = fmt_shape(gallery) if isinstance(gallery, Tensor) else type(gallery).__name__
        raise ValueError(
            f"gallery: expected images (G, 3, H, W) or embeddings (G, {embedding_dim}), got {got}"
        )
    if gallery.dim() == 4:
        check_images(gallery, "gallery")
    else:
        check_floating(gallery, "gallery")
        check_size(gallery, "gallery", 1, embedding_dim, "embedding size E")
    if gallery.shape[0] == 0:
        raise ValueError(f"gallery: expected at least one item, got shape {fmt_shape(gallery)}")
    check_finite(gallery.flatten(1), "gallery")
    return gallery


def check_exclude(exclude: int | None, size: int) -> int | None:
    """``None``, or a gallery index in ``[0, size)`` as a plain int.

    Raises:
        ValueError: Naming ``exclude``, if it is not an integer index of the gallery.
    """
    if exclude is None:
        return None
    try:
        if isinstance(exclude, bool):
            raise TypeError
        index = operator.index(exclude)
    except TypeError:
        raise ValueError(
            f"exclude: expected a gallery index (int) or None, got {exclude!r}"
        ) from None
    if not 0 <= index < size:
        raise ValueError(f"exclude: expected a gallery index in [0, G={size}), got {index}")
    return index


def rank_gallery(
    query: Tensor, gallery: Tensor, k: int, exclude: int | None = None
) -> tuple[Tensor, Tensor]:
    """The top-k gallery items of one query, by cosine similarity.

    Scored and ranked exactly as :func:`~valfusion.metrics.recall_at_k` does: by score,
    descending, equal scores by lower gallery index.

    Args:
        query: ``(1, E)`` query embedding.
        gallery: ``(G, E)`` gallery embeddings (cast to the query's dtype).
        k: How many results; clipped to the number of items left after ``exclude``.
        exclude: A gallery index to leave out, or ``None``.

    Returns:
        ``(k,)`` long indices, best first, and their ``(k,)`` scores.
    """
    scores = chunk_scores(query, prepare_gallery(gallery.to(query.dtype), "cosine"))
    if exclude is not None:
        mask_excluded(scores, torch.tensor([exclude], device=scores.device))
    order = topk_by_rule(scores, min(k, gallery.shape[0] - (exclude is not None)))[0]
    return order, scores[0, order]
