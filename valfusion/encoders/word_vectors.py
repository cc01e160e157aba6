"""Initialise word embeddings from a GloVe-format text file the user supplies."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from valfusion.encoders.vocabulary import Vocabulary

__all__ = ["WordVectors", "load_word_vectors"]


@dataclass(frozen=True)
class WordVectors:
    """Result of :func:`load_word_vectors`.

    Attributes:
        weights: Embedding matrix ``(V, dim)`` float32, row ``i`` for token id ``i``.
        found: Number of regular vocabulary tokens that had a vector in the file.
        missing: The regular tokens without a vector, in id order.
    """

    weights: Tensor
    found: int
    missing: tuple[str, ...]

    @property
    def coverage(self) -> float:
        """Fraction of regular tokens found, ``found / (found + len(missing))`` (1.0 if none)."""
        total = self.found + len(self.missing)
        return self.found / total if total else 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_word_vectors(
    path: str | os.PathLike[str],
    vocabulary: Vocabulary,
    embedding: nn.Embedding | None = None,
) -> WordVectors:
    """Read the vectors of ``vocabulary``'s tokens from a GloVe-format text file.

    Each non-empty line is ``word v_1 ... v_dim`` separated by spaces (UTF-8). The
    dimension is that of ``embedding`` if given, otherwise that of the first line; a
    first line of exactly two integers is read as a word2vec header ``count dim``.
    A word may itself contain spaces (as in the large cased GloVe files): the last
    ``dim`` fields are the vector. Tokens are matched exactly; since :func:`tokenize`
    lowercases, use uncased vectors (e.g. ``glove.6B``/``glove.42B``). The first
    occurrence of a duplicated word wins. The special tokens are never looked up.

    Rows without a vector keep ``embedding``'s current values, or are zero when no
    ``embedding`` is given (the PAD row is then zero as ``padding_idx`` expects).

    Args:
        path: The vector file.
        vocabulary: Tokens to look up; row ``i`` of the result is token id ``i``.
        embedding: If given, ``(len(vocabulary), dim)`` embedding whose rows for the
            found tokens are overwritten in place.

    Returns:
        :class:`WordVectors` with ``weights (V, dim)``, ``found`` and ``missing``.

    Raises:
        ValueError: If a line has fewer than ``dim`` numbers after the word, more
            numbers than ``dim`` (a dimension mismatch) or a value that is not a
            number (the message names ``path:line``); if the file holds no vectors;
            or if ``embedding``'s size does not match ``vocabulary``.
    """
    if not isinstance(vocabulary, Vocabulary):
        raise ValueError(f"vocabulary: expected a Vocabulary, got {type(vocabulary).__name__}")
    if embedding is not None:
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"embedding: expected an nn.Embedding, got {type(embedding).__name__}")
        if embedding.num_embeddings != len(vocabulary):
            raise ValueError(
                f"embedding: expected num_embeddings = len(vocabulary) = {len(vocabulary)}, "
                f"got {embedding.num_embeddings}"
            )
    wanted = {token: index for index, token in enumerate(vocabulary.tokens) if index >= 2}
    dim = embedding.embedding_dim if embedding is not None else None
    vectors: dict[int, list[float]] = {}
    name = os.fspath(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.rstrip("\r\n").rstrip(" ").split(" ")
            if fields == [""]:
                continue
            if line_number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                header_dim = int(fields[1])
                if dim is not None and header_dim != dim:
                    raise ValueError(
                        f"{name}:1: header declares dimension {header_dim}, "
                        f"but embedding has embedding_dim {dim}"
                    )
                dim = header_dim
                continue
            if dim is None:
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{name}:{line_number}: expected a word followed by numbers")
            if len(fields) < dim + 1:
                raise ValueError(
                    f"{name}:{line_number}: expected a word followed by {dim} numbers, "
                    f"got {len(fields) - 1} fields after the word"
                )
            if len(fields) > dim + 1 and _is_number(fields[-dim - 1]):
                raise ValueError(
                    f"{name}:{line_number}: dimension mismatch: expected {dim} numbers "
                    f"after the word, found at least {dim + 1}"
                )
            word = " ".join(fields[:-dim])
            index = wanted.get(word)
            if index is None or index in vectors:
                continue
            try:
                values = [float(value) for value in fields[-dim:]]
            except ValueError as error:
                raise ValueError(
                    f"{name}:{line_number}: {error} in the vector of {word!r}"
                ) from None
            if not all(math.isfinite(value) for value in values):
                raise ValueError(
                    f"{name}:{line_number}: non-finite value in the vector of {word!r}"
                )
            vectors[index] = values
    if dim is None:
        raise ValueError(f"path: {name} contains no word vectors")

    if embedding is not None:
        weights = embedding.weight.detach().to(device="cpu", dtype=torch.float32, copy=True)
    else:
        weights = torch.zeros(len(vocabulary), dim)
    if vectors:
        rows = torch.tensor(sorted(vectors), dtype=torch.long)
        weights[rows] = torch.tensor([vectors[i] for i in rows.tolist()], dtype=torch.float32)
        if embedding is not None:
            with torch.no_grad():
                embedding.weight[rows.to(embedding.weight.device)] = weights[rows].to(
                    embedding.weight
                )
    missing = tuple(token for token, index in wanted.items() if index not in vectors)
    return WordVectors(weights=weights, found=len(vectors), missing=missing)
