"""The text-encoder interface: strings -> padded token ids -> ``(B, D)`` features.

Every text encoder the composers can read is a :class:`TextEncoder`: it owns the
tokenizer that matches its weights (:meth:`~TextEncoder.tokenize`), maps a padded batch of
ids to one feature per text (:meth:`~TextEncoder.forward`), and says how wide that feature
is (:attr:`~TextEncoder.output_dim`). Tokenizing is kept out of ``forward`` so that the data
loader (or a training step) can tokenize on the CPU and the module stays a plain tensor ->
tensor function (compilable, exportable, DDP-wrappable).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module, ABC):
    """A text tower: ``tokenize(texts) -> (tokens, lengths)``, ``forward(tokens, lengths) -> t``.

    ``t = f(tokens[b, :lengths[b]])``, shape ``(B, output_dim)``: a row's feature depends
    only on its ``lengths[b]`` valid ids, never on how far it is padded.

    Implementations: :class:`~valfusion.encoders.LSTMTextEncoder` (with a
    :class:`~valfusion.encoders.Vocabulary`), :class:`~valfusion.encoders.HFTextEncoder`
    (Hugging Face ``transformers``) and :class:`~valfusion.encoders.OpenCLIPTextEncoder`
    (open_clip's text tower); :func:`~valfusion.encoders.build_text_encoder` builds one
    from a spec string.

    Attributes:
        vocab_size: Number of token ids: :meth:`forward` accepts ids in ``[0, vocab_size)``
            (what a caller checks ``tokens`` against, e.g. with a batch from elsewhere).

    Example:
        >>> from valfusion.encoders import LSTMTextEncoder, Vocabulary
        >>> vocab = Vocabulary.from_texts(["is red", "is blue"])
        >>> encoder = LSTMTextEncoder.from_vocabulary(vocab, word_dim=8, hidden_dim=8,
        ...                                           out_dim=4).eval()
        >>> tokens, lengths = encoder.tokenize(["is red", "blue"])
        >>> encoder(tokens, lengths).shape
        torch.Size([2, 4])
    """

    vocab_size: int

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Width ``D`` of the features :meth:`forward` returns."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Map a batch of strings to padded token ids, on the CPU.

        Args:
            texts: ``B >= 1`` strings; a bare ``str`` is rejected (wrap it in a list).
                An empty text still gets at least one valid id.

        Returns:
            ``(tokens (B, L) long, lengths (B,) long)``: rows right-padded, ``L =
            max(lengths)`` (capped by the encoder's maximum length), every length in
            ``[1, L]``.

        Raises:
            ValueError: If ``texts`` is a ``str``, empty, or has a non-string element.
        """

    @abstractmethod
    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Encode a padded batch of token ids.

        Args:
            tokens: Token ids ``(B, L)``, integer, as :meth:`tokenize` returns them.
            lengths: Valid ids per row ``(B,)``, integer, each in ``[1, L]``.

        Returns:
            Text features ``(B, output_dim)``.
        """

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Strings to features in one call: :meth:`tokenize`, then :meth:`forward`.

        The ids move to the device of the encoder's parameters (the CPU if it has none).

        Args:
            texts: ``B >= 1`` strings.

        Returns:
            Text features ``(B, output_dim)``.
        """
        tokens, lengths = self.tokenize(texts)
        parameter = next(self.parameters(), None)
        device = torch.device("cpu") if parameter is None else parameter.device
        return self(tokens.to(device), lengths.to(device))

    def save_architecture(self, directory: str | os.PathLike[str]) -> None:
        """Write the files needed to rebuild this encoder with random weights (no weights).

        A model's weights file holds every parameter; these files hold what the
        parameters do not: a transformer's configuration and tokenizer files. The default
        writes nothing, for an encoder fully described by its constructor arguments.

        Args:
            directory: An existing folder to write into.
        """
        del directory
