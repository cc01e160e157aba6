"""A word vocabulary for the text feedback: tokenizer, ids, JSON persistence.

The tokenizer is deliberately simple and has no download-dependent parts: lowercase,
then split into runs of word characters and single punctuation marks. The vocabulary
reserves two ids that never collide: ``PAD`` (0, fills the short rows of a batch) and
``UNK`` (1, any word not in the vocabulary). The VAL release uses id 0 for both, so a
padded step and an unknown word look the same to the model; here they do not.

Encoding caps every text at ``max_tokens`` tokens (default :data:`DEFAULT_MAX_TOKENS`,
64), keeping the first ones: a single runaway caption (100,000 characters) would
otherwise make the text encoder's batch as long as that caption. The cap covers every
released caption measured with :func:`tokenize`: at most 19 tokens on FashionIQ val
(26 for a pair joined with ``" and "``), 13 on Shoes and 60 on CIRR; truncated texts are
counted (:attr:`Vocabulary.truncated_texts`) and warned about.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from valfusion._io import atomic_write
from valfusion._validation import (
    check_int_tensor,
    check_ndim,
    check_same_batch,
    check_texts,
    fmt_shape,
)

__all__ = ["DEFAULT_MAX_TOKENS", "EncodedTexts", "Vocabulary", "tokenize"]

_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
_FORMAT = "valfusion.Vocabulary"
_FORMAT_VERSION = 1

DEFAULT_MAX_TOKENS = 64
"""Tokens kept per text by default (the longest released caption has 60, on CIRR)."""


def _check_max_tokens(value: object, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    return value


def _truncation_message(truncated: int, total: int, longest: int, cap: int) -> str:
    return (
        f"texts: {truncated} of {total} texts have more than max_tokens={cap} tokens "
        f"(the longest has {longest}); each keeps its first {cap}"
    )


def tokenize(text: str) -> list[str]:
    """Split a text into lowercase word and punctuation tokens.

    A token is a maximal run of word characters (letters of any script, digits,
    underscore) or a single punctuation/symbol character; whitespace separates tokens
    and is dropped. ``"Is RED, not blue!"`` -> ``["is", "red", ",", "not", "blue", "!"]``.

    Args:
        text: Any string (may be empty).

    Returns:
        The tokens in order; an empty list for a text without tokens.

    Raises:
        ValueError: If ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    return _TOKEN_PATTERN.findall(text.lower())


class EncodedTexts(NamedTuple):
    """A padded batch of token ids; unpacks as ``ids, lengths = vocabulary.encode(texts)``.

    Attributes:
        ids: Token ids ``(B, T)`` long, rows right-padded with the PAD id;
            ``T = max(lengths)``.
        lengths: Number of valid (non-padding) steps per row ``(B,)`` long, each in
            ``[1, T]``.
    """

    ids: Tensor
    lengths: Tensor


class Vocabulary:
    """Maps tokens to integer ids with distinct padding and unknown ids.

    Ids: ``pad_id = 0`` for ``"<pad>"``, ``unk_id = 1`` for ``"<unk>"``, then the
    regular tokens from 2 in the order given. Build one from training texts with
    :meth:`from_texts`.

    :meth:`encode` keeps at most ``max_tokens`` tokens of each text (the first ones), so
    that no caption, however long, makes a batch longer than that; every text it cuts
    is counted in :attr:`truncated_texts`, and the first cut warns.

    Args:
        tokens: The regular tokens in id order (ids 2, 3, ...). Must be distinct
            non-empty strings and must not contain the special tokens.
        max_tokens: Tokens kept per text by :meth:`encode` (default
            :data:`DEFAULT_MAX_TOKENS` = 64, above every released caption); ``None``
            keeps them all. Saved with the vocabulary.

    Raises:
        ValueError: If ``tokens`` has duplicates, empty or non-string entries, or a
            special token, or ``max_tokens`` is not a positive integer or ``None``.

    Attributes:
        max_tokens: The cap (``None``: no cap).
        truncated_texts: How many texts :meth:`encode` has truncated so far.

    Example:
        >>> vocab = Vocabulary.from_texts(["is red", "is blue"])
        >>> ids, lengths = vocab.encode(["is green"])
        >>> ids.tolist(), lengths.tolist()
        ([[2, 1]], [2])
    """

    pad_token = "<pad>"
    unk_token = "<unk>"
    pad_id = 0
    unk_id = 1

    def __init__(
        self, tokens: Iterable[str], max_tokens: int | None = DEFAULT_MAX_TOKENS
    ) -> None:
        self.max_tokens = _check_max_tokens(max_tokens, "max_tokens")
        self.truncated_texts = 0
        self._warned = False
        tokens = list(tokens)
        specials = (self.pad_token, self.unk_token)
        for position, token in enumerate(tokens):
            if not isinstance(token, str) or not token:
                raise ValueError(
                    f"tokens: expected non-empty strings, got {token!r} at position {position}"
                )
            if token in specials:
                raise ValueError(
                    f"tokens: {token!r} at position {position} is a special token; "
                    f"the vocabulary adds {specials} itself"
                )
        self._itos: tuple[str, ...] = (*specials, *tokens)
        self._stoi: dict[str, int] = {token: i for i, token in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            duplicates = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"tokens: expected distinct tokens, got duplicates {duplicates[:10]}")

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
    ) -> Vocabulary:
        """Build a vocabulary from the tokens of ``texts``.

        Tokens occurring at least ``min_count`` times are kept, ordered by decreasing
        count and then alphabetically, so the same texts always give the same ids. Texts
        longer than ``max_tokens`` tokens are counted and warned about here, before
        training, since :meth:`encode` will keep only their first ``max_tokens`` tokens.

        Args:
            texts: Training texts, tokenized with :func:`tokenize`.
            min_count: Minimum number of occurrences for a token to get its own id;
                rarer tokens map to ``unk_id``.
            max_tokens: The vocabulary's cap (see the class); ``None`` for none.

        Returns:
            The vocabulary.

        Raises:
            ValueError: If ``min_count`` is not a positive integer, ``max_tokens`` is not
                a positive integer or ``None``, or an element of ``texts`` is not a string.

        Warns:
            UserWarning: Naming how many of ``texts`` exceed ``max_tokens``.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count: expected a positive integer, got {min_count!r}")
        _check_max_tokens(max_tokens, "max_tokens")
        if isinstance(texts, str):
            raise ValueError("texts: expected an iterable of strings, got a single str")
        counts: Counter[str] = Counter()
        total = too_long = longest = 0
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(
                    f"texts: expected strings, got {type(text).__name__} at position {index}"
                )
            tokens = tokenize(text)
            counts.update(tokens)
            total += 1
            if max_tokens is not None and len(tokens) > max_tokens:
                too_long += 1
                longest = max(longest, len(tokens))
        if max_tokens is not None and too_long:
            warnings.warn(
                _truncation_message(too_long, total, longest, max_tokens), stacklevel=2
            )
        specials = (cls.pad_token, cls.unk_token)
        kept = [
            token
            for token, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            if count >= min_count and token not in specials
        ]
        return cls(kept, max_tokens=max_tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens in id order, specials first (``tokens[i]`` has id ``i``)."""
        return self._itos

    def __len__(self) -> int:
        """Number of ids, specials included (the ``vocab_size`` of an embedding)."""
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self._itos, self.max_tokens) == (other._itos, other.max_tokens)

    def __hash__(self) -> int:
        return hash((self._itos, self.max_tokens))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={len(self)}, max_tokens={self.max_tokens})"

    def token_to_id(self, token: str) -> int:
        """Id of ``token``, or ``unk_id`` if it is not in the vocabulary.

        Args:
            token: A token as produced by :func:`tokenize`.
        """
        return self._stoi.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        """Token with id ``index``.

        Args:
            index: A token id in ``[0, len(self))``.

        Raises:
            ValueError: If ``index`` is not in ``[0, len(self))``.
        """
        if not 0 <= index < len(self._itos):
            raise ValueError(f"index: expected an id in [0, {len(self._itos)}), got {index}")
        return self._itos[index]

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> EncodedTexts:
        """Tokenize and map a batch of texts to padded ids.

        A text with no tokens (e.g. ``""``) is encoded as the single token ``UNK`` with
        length 1, so that every length is at least 1 and a text encoder always has a
        valid step to pool over. A text with more tokens than the cap keeps its first
        ``cap`` tokens, so ``T <= cap``; each such text adds one to
        :attr:`truncated_texts`.

        Args:
            texts: ``B >= 1`` strings. A bare ``str`` is rejected rather than read as a
                sequence of characters; wrap a single text in a list.
            max_length: The cap for this call (no warning when it cuts); default the
                vocabulary's ``max_tokens``.

        Returns:
            :class:`EncodedTexts` ``(ids (B, T) long, lengths (B,) long)`` with
            ``T = max(lengths)``; padded positions hold ``pad_id``.

        Raises:
            ValueError: If ``texts`` is a ``str``, empty, or has a non-string element,
                or ``max_length`` is not a positive integer.

        Warns:
            UserWarning: The first time this vocabulary truncates, naming how many texts of
                the batch it cut (later truncations are only counted).
        """
        texts = check_texts(texts)
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length: expected a positive integer or None, got {max_length!r}")
        cap = self.max_tokens if max_length is None else max_length
        rows: list[list[int]] = []
        truncated = longest = 0
        for text in texts:
            tokens = tokenize(text)
            if cap is not None and len(tokens) > cap:
                truncated += 1
                longest = max(longest, len(tokens))
                tokens = tokens[:cap]
            rows.append([self.token_to_id(token) for token in tokens] or [self.unk_id])
        if cap is not None and truncated:
            self.truncated_texts += truncated
            if max_length is None and not self._warned:  # an explicit max_length is no surprise
                self._warned = True
                warnings.warn(
                    _truncation_message(truncated, len(texts), longest, cap)
                    + "; later truncations are counted in Vocabulary.truncated_texts",
                    stacklevel=2,
                )
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return EncodedTexts(ids, lengths)

    def decode(self, ids: Tensor, lengths: Tensor | None = None) -> list[str]:
        """Map padded ids back to space-joined token strings.

        ``decode(*encode(texts))`` returns the texts' tokens joined by single spaces,
        with out-of-vocabulary tokens shown as ``"<unk>"``.

        Args:
            ids: Token ids ``(B, T)``, integer.
            lengths: Valid steps per row ``(B,)``, integer. If ``None``, every ``pad_id``
                is dropped instead.

        Returns:
            ``B`` strings.

        Raises:
            ValueError: If the shapes or dtypes are wrong or an id is out of range.
        """
        ids = check_ndim(check_int_tensor(ids, "ids"), "ids", 2, "(B, T)")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise ValueError(
                f"ids: expected ids in [0, {len(self)}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}] in shape {fmt_shape(ids)}"
            )
        if lengths is not None:
            lengths = check_ndim(check_int_tensor(lengths, "lengths"), "lengths", 1, "(B,)")
            check_same_batch(ids, "ids", lengths, "lengths")
            if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > ids.shape[1]):
                raise ValueError(
                    f"lengths: expected values in [0, T={ids.shape[1]}], got values in "
                    f"[{int(lengths.min())}, {int(lengths.max())}]"
                )
        texts = []
        for i, row in enumerate(ids.tolist()):
            if lengths is None:
                row = [index for index in row if index != self.pad_id]
            else:
                row = row[: int(lengths[i])]
            texts.append(" ".join(self._itos[index] for index in row))
        return texts

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable description (what :meth:`save` writes)."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "max_tokens": self.max_tokens,
            "tokens": list(self._itos[2:]),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Vocabulary:
        """Inverse of :meth:`to_dict`.

        A description without ``"max_tokens"`` (written before the cap existed) gets
        :data:`DEFAULT_MAX_TOKENS`.

        Args:
            data: The dictionary written by :meth:`to_dict`.

        Raises:
            ValueError: If ``data`` is not a vocabulary description of a known version.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"data: expected a dict with format {_FORMAT!r}, got {data!r:.200}")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"data: unsupported vocabulary version {data.get('version')!r} "
                f"(this valfusion reads version {_FORMAT_VERSION})"
            )
        if data.get("pad_token") != cls.pad_token or data.get("unk_token") != cls.unk_token:
            raise ValueError(
                f"data: special tokens {data.get('pad_token')!r}/{data.get('unk_token')!r} "
                f"differ from {cls.pad_token!r}/{cls.unk_token!r}"
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise ValueError(f"data: expected 'tokens' to be a list, got {type(tokens).__name__}")
        max_tokens = _check_max_tokens(data.get("max_tokens", DEFAULT_MAX_TOKENS), "max_tokens")
        return cls(tokens, max_tokens=max_tokens)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON, atomically.

        Written through the package's atomic writer (a temporary sibling, ``fsync``, then
        ``os.replace``), so a crash never leaves a half-written file.

        Args:
            path: Destination file; its directory must exist.
        """
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n"
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Args:
            path: JSON file.

        Returns:
            The vocabulary, with the same ids as the saved one.

        Raises:
            ValueError: If the file is not valid JSON or not a vocabulary description.
        """
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"path: {os.fspath(path)} is not valid JSON ({error})") from error
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"path: {os.fspath(path)}: {error}") from error
