"""open_clip's text tower (CLIP, and CLIP variants with a custom text tower) as a :class:`TextEncoder`.

``open_clip_torch`` is optional (``pip install "valfusion[open_clip]"``) and imported only
when an encoder is built. A model name alone builds random weights; pretrained CLIP
weights download only when the caller names them (``"ViT-B-32@laion2b_s34b_b79k"``).
One exception is open_clip's, not valfusion's: a model whose text tower or tokenizer comes
from Hugging Face (``hf_model_name`` or ``hf_tokenizer_name`` in its config, e.g.
``"xlm-roberta-base-ViT-B-32"`` or the SigLIP models) has open_clip fetch that
configuration and tokenizer from the Hub whenever it is built, also without weights and
from a saved architecture. CLIP's own models (``"ViT-B-32"``, ...), with the BPE tokenizer
bundled in open_clip, need nothing from the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from valfusion._io import atomic_write
from valfusion._validation import check_bool, check_texts, check_tokens
from valfusion.encoders._text_head import freeze_, projection_head, save_atomically
from valfusion.encoders.text_encoder import TextEncoder

__all__ = ["OpenCLIPTextEncoder"]

_CONFIG_FILE = "open_clip_config.json"


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            'OpenCLIPTextEncoder needs open_clip: pip install "valfusion[open_clip]"'
        ) from error
    return open_clip


class _CLIPTextTower(nn.Module):
    """The text half of an ``open_clip.CLIP``, sharing its modules (no copies).

    Its forward is ``CLIP.encode_text`` (without normalisation), so the features are the
    CLIP model's own; only the text parameters are registered, not the vision tower's.
    """

    # open_clip's own modules (untyped: the library is optional and ships no annotations).
    transformer: Any
    positional_embedding: Any
    text_projection: Any

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)

    def forward(self, text: Tensor) -> Tensor:
        from open_clip.transformer import text_global_pool

        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, text, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return x


def _text_tower(clip: nn.Module) -> nn.Module:
    text = getattr(clip, "text", None)
    if isinstance(text, nn.Module):  # CustomTextCLIP: the tower is one module
        return text
    if all(hasattr(clip, name) for name in ("token_embedding", "transformer", "ln_final")):
        return _CLIPTextTower(clip)
    raise ValueError(
        f"model: expected an open_clip CLIP or CustomTextCLIP model, got {type(clip).__name__}"
    )


def _split_pretrained(name: str) -> tuple[str, str | None]:
    """``"ViT-B-32@laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``.

    A ``PRETRAINED`` that is a path (starting with ``/``, ``.`` or ``~``) must be an
    existing file: it is never taken for a tag."""
    model, sep, pretrained = name.partition("@")
    if not model or (sep and not pretrained):
        raise ValueError(
            f"name: expected MODEL or MODEL@PRETRAINED (an open_clip model name and a "
            f"pretrained tag or file), got {name!r}"
        )
    if pretrained.startswith(("/", ".", "~")):
        pretrained = os.path.expanduser(pretrained)
        if not Path(pretrained).is_file():
            raise ValueError(
                f"name: expected MODEL@PRETRAINED with PRETRAINED an open_clip tag or an "
                f"existing checkpoint file, got {name!r}, whose file does not exist"
            )
    return model, pretrained or None


class OpenCLIPTextEncoder(TextEncoder):
    """open_clip's CLIP text tower, projected to ``D`` and batch-normalised.

    ``c = encode_text(tokens)`` ``(B, E)`` (CLIP's causal transformer, pooled at the
    end-of-text token and projected to the joint embedding size ``E``, not normalised);
    ``t = norm(W c + b)`` ``(B, D)``. :meth:`tokenize` trims the tokenizer's fixed
    ``context_length`` rows to the longest text in the batch; :meth:`forward` pads them
    back with the tokenizer's padding id, so the tower sees exactly the rows open_clip's
    tokenizer writes, and a row's feature does not depend on how far it was padded.

    Only the text tower's parameters belong to this module (for a plain ``CLIP``, its
    text modules are shared with the model passed in, not copied).

    Args:
        model: A built ``open_clip.CLIP`` or ``CustomTextCLIP`` (e.g. from
            ``open_clip.create_model``).
        tokenizer: Its tokenizer (``open_clip.get_tokenizer(name)``): a callable mapping
            a list of strings to ids ``(B, context_length)``, with ``sot_token_id`` /
            ``eot_token_id`` for CLIP's ``SimpleTokenizer``.
        output_dim: Output feature size ``D``.
        model_cfg: The open_clip model configuration (``open_clip.get_model_config``),
            needed by :meth:`save_architecture`; ``None`` if unknown.
        norm: ``"batch"`` for a ``BatchNorm1d`` after the projection, or ``None``.
        freeze: Keep the text tower's weights fixed (no gradients) and in eval mode.

    Attributes:
        text: The text tower, ``(B, context_length)`` ids -> ``(B, E)``.
        tokenizer: The tokenizer (not a module; not in the state dict).
        context_length: The tower's fixed sequence length.
        vocab_size: Rows of its token embedding (ids :meth:`forward` accepts).
        pad_id: The id the tokenizer pads with (0 for CLIP).
        proj: ``Linear(E, D)``.
        norm: ``BatchNorm1d(D)`` or identity.

    Raises:
        ValueError: If ``model`` is not an open_clip CLIP model, ``output_dim`` is not a
            positive integer, ``norm`` is unknown or ``freeze`` is not a bool.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        output_dim: int,
        *,
        model_cfg: dict[str, Any] | None = None,
        norm: str | None = "batch",
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.freeze = check_bool(freeze, "freeze")
        self.text = _text_tower(model)
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.context_length = int(getattr(model, "context_length", tokenizer.context_length))
        # The id the tokenizer pads with: whatever ends an empty text's row (0 for CLIP's
        # SimpleTokenizer; other open_clip tokenizers pad with their own id).
        self.pad_id = int(tokenizer([""])[0, -1])
        tower: Any = self.text
        self.vocab_size = int(getattr(model, "vocab_size", None) or tower.vocab_size)
        # The joint embedding size E, read off one forward pass (its attribute differs
        # between tower kinds); the tower's mode is restored afterwards.
        was_training = self.text.training
        with torch.no_grad():
            probe = torch.zeros(1, self.context_length, dtype=torch.long)
            embed_dim = int(self.text.eval()(probe).shape[-1])
        self.text.train(was_training)
        self._output_dim = output_dim
        self.proj, self.norm = projection_head(embed_dim, output_dim, norm)
        if self.freeze:
            freeze_(self.text)

    @classmethod
    def from_name(
        cls,
        name: str,
        output_dim: int,
        **kwargs: Any,
    ) -> OpenCLIPTextEncoder:
        """Build from an open_clip model name, with random weights unless some are named.

        Args:
            name: ``MODEL`` (random weights; e.g. ``"ViT-B-32"``, or a name registered
                with ``open_clip.add_model_config``) or ``MODEL@PRETRAINED`` (a pretrained
                tag such as ``laion2b_s34b_b79k``, which open_clip downloads into its
                cache, or a local checkpoint file). A model with a Hugging Face text
                tower or tokenizer also fetches their configuration and tokenizer files
                (see the module docstring).
            output_dim: Output feature size ``D``.
            **kwargs: ``norm``, ``freeze`` (see the class).

        Raises:
            ImportError: If ``open_clip`` is not installed.
            ValueError: If ``name`` is malformed, not an open_clip model, or names a
                checkpoint path that is not a file.
        """
        model_name, pretrained = _split_pretrained(name)
        open_clip = _import_open_clip()
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"name: expected an open_clip model name (open_clip.list_models(), or one "
                f"registered with open_clip.add_model_config), got {model_name!r}"
            )
        model = open_clip.create_model(
            model_name, pretrained=pretrained, pretrained_text=False, pretrained_image=False
        )
        tokenizer = open_clip.get_tokenizer(model_name)
        model_cfg = open_clip.get_model_config(model_name)
        return cls(model, tokenizer, output_dim, model_cfg=model_cfg, **kwargs)

    @classmethod
    def from_architecture(
        cls, directory: str | os.PathLike[str], output_dim: int, **kwargs: Any
    ) -> OpenCLIPTextEncoder:
        """Rebuild, with random weights, an encoder saved by :meth:`save_architecture`.

        Load the owning model's state dict afterwards to get the trained weights back.

        Args:
            directory: The folder :meth:`save_architecture` wrote.
            output_dim: Output feature size ``D`` (as when saved).
            **kwargs: ``norm``, ``freeze`` (as when saved).

        Raises:
            ImportError: If ``open_clip`` is not installed.
            ValueError: If ``directory`` has no ``open_clip_config.json``.
        """
        open_clip = _import_open_clip()
        path = Path(directory)
        if not (path / _CONFIG_FILE).is_file():
            raise ValueError(
                f"directory: expected a folder written by OpenCLIPTextEncoder."
                f"save_architecture (with {_CONFIG_FILE}), got {os.fspath(directory)}"
            )
        source = f"local-dir:{path}"
        model = open_clip.create_model(
            source, load_weights=False, pretrained_text=False, pretrained_image=False
        )
        tokenizer = open_clip.get_tokenizer(source)
        model_cfg = json.loads((path / _CONFIG_FILE).read_text(encoding="utf-8"))["model_cfg"]
        return cls(model, tokenizer, output_dim, model_cfg=model_cfg, **kwargs)

    def save_architecture(self, directory: str | os.PathLike[str]) -> None:
        """Write ``open_clip_config.json`` (``{"model_cfg": ...}``, open_clip's own layout).

        No weights: the owning model's weights file holds them. A tokenizer that is not
        CLIP's bundled ``SimpleTokenizer`` also saves its files here when it can.

        Args:
            directory: An existing folder to write into.

        Raises:
            ValueError: If the encoder was built without ``model_cfg``.
        """
        if self.model_cfg is None:
            raise ValueError(
                "model_cfg: this OpenCLIPTextEncoder was built without its open_clip model "
                "configuration, so its architecture cannot be saved; pass model_cfg="
                "open_clip.get_model_config(name) or build it with from_name"
            )
        text = json.dumps({"model_cfg": self.model_cfg}, indent=2) + "\n"
        atomic_write(
            Path(directory) / _CONFIG_FILE, lambda handle: handle.write(text.encode("utf-8"))
        )
        inner: Any = getattr(self.tokenizer, "tokenizer", None)
        if hasattr(inner, "save_pretrained"):  # open_clip's HFTokenizer wraps a transformers one
            save_atomically(directory, inner.save_pretrained)

    @property
    def output_dim(self) -> int:
        """Width ``D`` of the features."""
        return self._output_dim

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        """Set training mode; a frozen text tower stays in eval mode.

        Args:
            mode: Training (``True``) or evaluation mode.
        """
        super().train(mode)
        if self.freeze:
            self.text.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The open_clip tokenizer's ids, trimmed to the longest text in the batch.

        Each row is ``[SOT] words [EOT]`` then padding (id 0 for CLIP); texts longer than
        ``context_length`` are cut by the tokenizer, which keeps ``EOT`` last. ``lengths``
        counts the ids up to the last non-padding one (``EOT``), so an empty text has
        length 2.

        Args:
            texts: ``B >= 1`` strings.

        Returns:
            ``(tokens (B, L) long, lengths (B,) long)`` with ``L <= context_length``.

        Raises:
            ValueError: If ``texts`` is not a non-empty sequence of strings.
        """
        texts = check_texts(texts)
        tokens = self.tokenizer(texts).long()
        # A row's length runs to its last non-padding id (EOT for CLIP).
        positions = torch.arange(1, tokens.shape[1] + 1)
        lengths = ((tokens != self.pad_id) * positions).amax(dim=1).clamp(min=1)
        return tokens[:, : int(lengths.max())].contiguous(), lengths

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Encode a padded batch of token ids.

        Args:
            tokens: Token ids ``(B, L)``, integer, ``L <= context_length``.
            lengths: Valid ids per row ``(B,)``, integer, each in ``[1, L]``.

        Returns:
            Text features ``(B, output_dim)``.

        Raises:
            ValueError: If ``tokens`` or ``lengths`` has the wrong rank, dtype, batch size
                or out-of-range values, or ``L > context_length``.
        """
        tokens, lengths = check_tokens(tokens, lengths, self.vocab_size)
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens: expected at most context_length={self.context_length} steps, got "
                f"shape ({tokens.shape[0]}, {tokens.shape[1]})"
            )
        valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(
            tokens.device
        )[:, None]
        # Every step past a row's length holds the padding id, as the tokenizer writes it.
        padded = F.pad(
            tokens.masked_fill(~valid, self.pad_id),
            (0, self.context_length - tokens.shape[1]),
            value=self.pad_id,
        )
        return self.norm(self.proj(self.text(padded)))
