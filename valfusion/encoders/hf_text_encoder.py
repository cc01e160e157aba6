"""Hugging Face ``transformers`` text encoders (BERT, RoBERTa, ...) as a :class:`TextEncoder`.

``transformers`` is optional (``pip install "valfusion[hf]"``) and imported only when an
encoder is built from a name or folder. Nothing downloads unless the caller names a hub
model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from valfusion._validation import check_bool, check_choice, check_texts, check_tokens
from valfusion.encoders._text_head import freeze_, projection_head, save_atomically
from valfusion.encoders.text_encoder import TextEncoder
from valfusion.encoders.vocabulary import DEFAULT_MAX_TOKENS

__all__ = ["HF_POOLINGS", "HFTextEncoder"]

HF_POOLINGS = ("cls", "mean")
"""Poolings of :class:`HFTextEncoder`: the first token's state, or the mean over valid tokens."""


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            'HFTextEncoder needs Hugging Face transformers: pip install "valfusion[hf]"'
        ) from error
    return transformers


class HFTextEncoder(TextEncoder):
    """A ``transformers`` encoder, pooled, projected to ``D`` and batch-normalised.

    ``h = model(tokens, mask).last_hidden_state`` ``(B, L, H)`` with ``mask[b, s] = s <
    lengths[b]``; ``p_b = h_{b,0}`` (``"cls"``) or ``p_b = (1 / lengths_b) · Σ_{s <
    lengths_b} h_{b,s}`` (``"mean"``); ``t = norm(W p + b)`` ``(B, D)``. Rows are
    right-padded, so positions and the attention mask make a row's feature independent of
    its padding.

    Build one from a hub name or local folder with :meth:`from_pretrained`, or pass
    already-built objects here. :meth:`save_architecture` and :meth:`from_architecture`
    save and rebuild the configuration and tokenizer (not the weights, which the owning
    model's weights file holds).

    Args:
        model: A ``transformers`` encoder (``AutoModel``: its output has
            ``last_hidden_state``) taking ``input_ids`` and ``attention_mask``.
        tokenizer: Its tokenizer (a ``PreTrainedTokenizerBase``).
        output_dim: Output feature size ``D``.
        pooling: ``"cls"`` (first token) or ``"mean"`` (mean over valid tokens).
        norm: ``"batch"`` for a ``BatchNorm1d`` after the projection, or ``None``.
        freeze: Keep the transformer's weights fixed (no gradients) and in eval mode
            (no dropout); the projection and norm still train.
        max_length: Tokens kept per text by :meth:`tokenize` (special tokens included),
            at most the model's ``max_position_embeddings``; default the smaller of that and
            :data:`~valfusion.encoders.DEFAULT_MAX_TOKENS` (64).

    Attributes:
        model: The transformer.
        vocab_size: Rows of its input embedding (ids :meth:`forward` accepts).
        tokenizer: The tokenizer (not a module; not in the state dict).
        proj: ``Linear(hidden_size, D)``.
        norm: ``BatchNorm1d(D)`` or identity.

    Raises:
        ValueError: If ``output_dim`` is not a positive integer, ``max_length`` is not one
            within ``max_position_embeddings``, ``pooling`` or ``norm`` is unknown, or ``freeze`` is not a bool.
    """

    model: Any  # a transformers PreTrainedModel (untyped here: the library is optional)

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        output_dim: int,
        *,
        pooling: str = "cls",
        norm: str | None = "batch",
        freeze: bool = False,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise ValueError(
                f"model: expected a transformers model (an nn.Module with .config), got "
                f"{type(model).__name__}"
            )
        check_choice(pooling, "pooling", HF_POOLINGS)
        self.freeze = check_bool(freeze, "freeze")
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length is None:
            max_length = min(DEFAULT_MAX_TOKENS, limit) if isinstance(limit, int) else DEFAULT_MAX_TOKENS
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or max_length < 1
            or (isinstance(limit, int) and max_length > limit)
        ):
            raise ValueError(
                f"max_length: expected a positive integer at most the model's "
                f"max_position_embeddings={limit}, got {max_length!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self._output_dim = output_dim
        self.proj, self.norm = projection_head(int(self.model.config.hidden_size), output_dim, norm)
        if self.freeze:
            freeze_(self.model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], output_dim: int, **kwargs: Any
    ) -> HFTextEncoder:
        """Load a pretrained model and its tokenizer with ``AutoModel``/``AutoTokenizer``.

        A local folder is read; any other string is a hub name, which ``transformers``
        downloads (into its cache) because the caller named it. A path (an
        ``os.PathLike``, or a string starting with ``/``, ``.`` or ``~``) must be an
        existing folder: it is never taken for a hub name. No code from the folder or the
        hub runs (``trust_remote_code`` stays off).

        Args:
            name_or_path: A folder with ``config.json``, weights and tokenizer files, or
                a hub model name such as ``"bert-base-uncased"``.
            output_dim: Output feature size ``D``.
            **kwargs: ``pooling``, ``norm``, ``freeze``, ``max_length`` (see the class).

        Raises:
            ImportError: If ``transformers`` is not installed.
            ValueError: If ``name_or_path`` is a path but not an existing folder.
        """
        source = os.fspath(name_or_path)
        is_path = isinstance(name_or_path, os.PathLike) or source.startswith(("/", ".", "~"))
        if is_path and not Path(source).expanduser().is_dir():
            raise ValueError(
                f"name_or_path: expected an existing folder (written by save_pretrained) or a "
                f"hub model name, got {source!r}, which is not a folder"
            )
        transformers = _import_transformers()
        source = os.path.expanduser(source)
        model = transformers.AutoModel.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        return cls(model, tokenizer, output_dim, **kwargs)

    @classmethod
    def from_architecture(
        cls, directory: str | os.PathLike[str], output_dim: int, **kwargs: Any
    ) -> HFTextEncoder:
        """Rebuild, with random weights, an encoder saved by :meth:`save_architecture`.

        ``AutoModel.from_config`` builds the transformer; load the owning model's state
        dict afterwards to get the trained weights back.

        Args:
            directory: The folder :meth:`save_architecture` wrote.
            output_dim: Output feature size ``D`` (as when saved).
            **kwargs: ``pooling``, ``norm``, ``freeze``, ``max_length`` (as when saved).

        Raises:
            ImportError: If ``transformers`` is not installed.
            ValueError: If ``directory`` has no ``config.json``.
        """
        transformers = _import_transformers()
        path = Path(directory)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"directory: expected a folder written by HFTextEncoder.save_architecture "
                f"(with config.json), got {os.fspath(directory)}"
            )
        config = transformers.AutoConfig.from_pretrained(path)
        model = transformers.AutoModel.from_config(config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, output_dim, **kwargs)

    def save_architecture(self, directory: str | os.PathLike[str]) -> None:
        """Write the model's ``config.json`` and the tokenizer files (no weights).

        ``transformers`` writes them into a scratch folder; each is then copied with the
        package's atomic writer.

        Args:
            directory: An existing folder to write into.
        """
        save_atomically(directory, self.model.config.save_pretrained)
        save_atomically(directory, self.tokenizer.save_pretrained)

    @property
    def output_dim(self) -> int:
        """Width ``D`` of the features."""
        return self._output_dim

    def train(self, mode: bool = True) -> HFTextEncoder:
        """Set training mode; a frozen transformer stays in eval mode (no dropout).

        Args:
            mode: Training (``True``) or evaluation mode.
        """
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The tokenizer's ids, right-padded to the longest text, at most ``max_length``.

        Special tokens (``[CLS]``, ``[SEP]``) are added as the tokenizer does; longer
        texts are truncated. A text that would get no token at all is one ``UNK`` (or
        ``PAD``) id of length 1.

        Args:
            texts: ``B >= 1`` strings.

        Returns:
            ``(tokens (B, L) long, lengths (B,) long)``.

        Raises:
            ValueError: If ``texts`` is not a non-empty sequence of strings.
        """
        texts = check_texts(texts)
        encoded = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            padding_side="right",
            return_tensors="pt",
        )
        tokens = encoded["input_ids"].long()
        lengths = encoded["attention_mask"].long().sum(dim=1)
        if tokens.shape[1] == 0 or bool((lengths == 0).any()):
            filler = self.tokenizer.unk_token_id
            if filler is None:
                filler = self.tokenizer.pad_token_id or 0
            if tokens.shape[1] == 0:
                tokens = torch.full((len(texts), 1), filler, dtype=torch.long)
            tokens[lengths == 0, 0] = filler
            lengths = lengths.clamp(min=1)
        return tokens, lengths

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Encode a padded batch of token ids.

        Args:
            tokens: Token ids ``(B, L)``, integer, each in ``[0, vocab_size)``.
            lengths: Valid ids per row ``(B,)``, integer, each in ``[1, L]``.

        Returns:
            Text features ``(B, output_dim)``.

        Raises:
            ValueError: If ``tokens`` or ``lengths`` has the wrong rank, dtype, batch size
                or out-of-range values, or ``L`` exceeds ``max_position_embeddings``.
        """
        tokens, lengths = check_tokens(tokens, lengths, self.vocab_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and tokens.shape[1] > limit:
            raise ValueError(
                f"tokens: expected at most max_position_embeddings={limit} steps, got "
                f"shape ({tokens.shape[0]}, {tokens.shape[1]})"
            )
        steps = tokens.shape[1]
        lengths = lengths.to(tokens.device)
        mask = torch.arange(steps, device=tokens.device) < lengths[:, None]
        hidden = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.to(hidden.dtype)[:, :, None]
            pooled = (hidden * weights).sum(dim=1) / lengths[:, None].to(hidden.dtype)
        return self.norm(self.proj(pooled))
