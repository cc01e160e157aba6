"""LSTM text encoder with max-pooling over the valid time steps (the VAL text side)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from valfusion._validation import check_choice, check_positive_int, check_tokens
from valfusion.encoders.text_encoder import TextEncoder
from valfusion.encoders.vocabulary import Vocabulary

__all__ = ["LSTMTextEncoder"]

_NORMS = ("batch", None)


class LSTMTextEncoder(TextEncoder):
    """Word embeddings -> LSTM -> max-pool over valid steps -> dropout -> linear (-> BN).

    ``t = norm(W · dropout(max_{s < length} LSTM(E[tokens])_s) + b)``, shape ``(B, out_dim)``.

    The max is taken over the ``length`` valid steps of each row only (padded steps
    are set to ``-inf`` first and the LSTM runs on packed sequences), so the same
    sentence gives the same feature whatever it is padded to. The VAL release pools
    over padded steps too; this is the intended behaviour instead.

    ``norm="batch"`` (default) ends with ``BatchNorm1d`` and no activation, as in the
    VAL release: it keeps each text channel at unit scale, which matters because the
    text feature is concatenated with batch-normalised image features by the
    composition layers. Like any batch norm it needs more than one sentence per batch
    in training mode; use ``norm=None`` for a plain linear projection.

    Args:
        vocab_size: Number of token ids ``V`` (``len(vocabulary)``).
        word_dim: Word embedding size (300 matches GloVe vectors).
        hidden_dim: LSTM hidden size per direction.
        out_dim: Output feature size ``D``.
        num_layers: Stacked LSTM layers.
        dropout: Dropout probability before the projection (and between LSTM layers
            when ``num_layers > 1``).
        padding_idx: Id of the padding token; its embedding row is zero and gets no
            gradient.
        bidirectional: Run a bidirectional LSTM (pooled width ``2 * hidden_dim``).
        norm: ``"batch"`` for a ``BatchNorm1d`` after the projection, or ``None``.
        vocabulary: The :class:`~valfusion.encoders.Vocabulary` whose ids the embedding
            reads, for :meth:`tokenize` and :meth:`~valfusion.encoders.TextEncoder.encode`
            (``None``: ids only). It is not a parameter: the state dict is the same with
            or without it. :meth:`from_vocabulary` sizes the encoder from it.

    Attributes:
        embedding: ``nn.Embedding(vocab_size, word_dim)``; initialise it from word
            vectors with :func:`~valfusion.encoders.load_word_vectors`.

    Raises:
        ValueError: If a size is not a positive integer, ``dropout`` is not in
            ``[0, 1)``, ``padding_idx`` is outside ``[0, vocab_size)``, ``norm`` is
            unknown, or ``vocabulary`` is not a Vocabulary of ``vocab_size`` ids.

    Example:
        >>> import torch
        >>> encoder = LSTMTextEncoder(vocab_size=100, word_dim=8, hidden_dim=16, out_dim=4)
        >>> tokens = torch.tensor([[5, 6, 0], [7, 8, 9]])
        >>> encoder(tokens, torch.tensor([2, 3])).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        hidden_dim: int = 1024,
        out_dim: int = 512,
        num_layers: int = 1,
        dropout: float = 0.1,
        padding_idx: int = 0,
        bidirectional: bool = False,
        norm: str | None = "batch",
        vocabulary: Vocabulary | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("word_dim", word_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
            ("num_layers", num_layers),
        ):
            check_positive_int(value, name)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if (
            isinstance(padding_idx, bool)
            or not isinstance(padding_idx, int)
            or not (0 <= padding_idx < vocab_size)
        ):
            raise ValueError(
                f"padding_idx: expected an int in [0, vocab_size={vocab_size}), got {padding_idx!r}"
            )
        check_choice(norm, "norm", _NORMS)
        if vocabulary is not None:
            if not isinstance(vocabulary, Vocabulary):
                raise ValueError(
                    f"vocabulary: expected a valfusion.encoders.Vocabulary or None, got "
                    f"{type(vocabulary).__name__}"
                )
            if len(vocabulary) != vocab_size:
                raise ValueError(
                    f"vocabulary: expected {vocab_size} ids (vocab_size), got a vocabulary "
                    f"of {len(vocabulary)}"
                )
        self.vocabulary = vocabulary
        self.vocab_size = vocab_size
        self.out_dim = out_dim
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(
            word_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        pooled_dim = hidden_dim * (2 if bidirectional else 1)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(pooled_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim) if norm == "batch" else nn.Identity()

    @classmethod
    def from_vocabulary(cls, vocabulary: Vocabulary, **kwargs: Any) -> LSTMTextEncoder:
        """An encoder over ``vocabulary``'s ids (``vocab_size=len(vocabulary)``) that holds it.

        Args:
            vocabulary: The vocabulary :meth:`tokenize` uses.
            **kwargs: The other constructor arguments (``word_dim``, ``out_dim``, ...).

        Returns:
            The encoder; its state dict has the same keys as one built without a vocabulary.
        """
        if not isinstance(vocabulary, Vocabulary):
            raise ValueError(
                f"vocabulary: expected a valfusion.encoders.Vocabulary, got "
                f"{type(vocabulary).__name__}"
            )
        return cls(len(vocabulary), vocabulary=vocabulary, **kwargs)

    @property
    def output_dim(self) -> int:
        """Width ``D`` of the features (``out_dim``)."""
        return self.out_dim

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``vocabulary.encode(texts)``: ids ``(B, T)`` and lengths ``(B,)``, both long.

        Words are cut as by :func:`~valfusion.encoders.tokenize`; unknown words map to
        ``UNK``; an empty text is one ``UNK``; at most ``vocabulary.max_tokens`` ids per
        text (see :meth:`~valfusion.encoders.Vocabulary.encode`).

        Args:
            texts: ``B >= 1`` strings.

        Raises:
            ValueError: If the encoder holds no vocabulary, or ``texts`` is not a
                non-empty sequence of strings.
        """
        if self.vocabulary is None:
            raise ValueError(
                "vocabulary: this LSTMTextEncoder has none, so it cannot tokenize text; "
                "build it with LSTMTextEncoder.from_vocabulary(vocabulary, ...)"
            )
        ids, lengths = self.vocabulary.encode(texts)
        return ids, lengths

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Encode a padded batch of token ids.

        Args:
            tokens: Token ids ``(B, T)``, integer, each in ``[0, vocab_size)``.
            lengths: Valid steps per row ``(B,)``, integer, each in ``[1, T]``; steps
                at or after ``lengths[b]`` are padding and are ignored.

        Returns:
            Text features ``(B, out_dim)``.

        Raises:
            ValueError: If ``tokens`` or ``lengths`` has the wrong rank, dtype, batch
                size or out-of-range values.
        """
        tokens, lengths = check_tokens(tokens, lengths, self.vocab_size)
        steps = tokens.shape[1]
        embedded = self.embedding(tokens)
        # Packing keeps padded steps out of the recurrence, so backward outputs of a
        # bidirectional LSTM also start at each row's own last valid step.
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        outputs, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=steps)
        valid = torch.arange(steps, device=tokens.device) < lengths.to(tokens.device)[:, None]
        pooled = outputs.masked_fill(~valid[:, :, None], float("-inf")).amax(dim=1)
        return self.norm(self.proj(self.dropout(pooled)))
