"""Text encoders named by one string: ``"lstm"``, ``"hf:NAME_OR_PATH"``, ``"open_clip:MODEL[@PRETRAINED]"``.

The spec is what a configuration file or the command line holds; :func:`build_text_encoder`
turns it into a :class:`~valfusion.encoders.TextEncoder`. The transformer adapters'
libraries are imported only when their kind is built.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from valfusion.encoders.hf_text_encoder import HFTextEncoder
from valfusion.encoders.lstm_text_encoder import LSTMTextEncoder
from valfusion.encoders.open_clip_text_encoder import OpenCLIPTextEncoder
from valfusion.encoders.text_encoder import TextEncoder
from valfusion.encoders.vocabulary import Vocabulary

__all__ = ["TEXT_ENCODER_KINDS", "TextEncoderSpec", "build_text_encoder", "parse_text_encoder_spec"]

TEXT_ENCODER_KINDS = ("lstm", "hf", "open_clip")
"""The kinds a text-encoder spec can name, in the order the help text lists them."""

_EXPECTED = "'lstm', 'hf:NAME_OR_PATH' or 'open_clip:MODEL[@PRETRAINED]'"


class TextEncoderSpec(NamedTuple):
    """A parsed text-encoder spec.

    Attributes:
        kind: One of :data:`TEXT_ENCODER_KINDS`.
        name: The Hugging Face model name or folder (``"hf"``), the open_clip model name
            (``"open_clip"``), or ``None`` (``"lstm"``).
        pretrained: open_clip's pretrained tag or checkpoint file after ``@``, or ``None``
            (random weights).
    """

    kind: str
    name: str | None = None
    pretrained: str | None = None


def parse_text_encoder_spec(spec: str) -> TextEncoderSpec:
    """Split and check a spec such as ``"hf:bert-base-uncased"`` without building anything.

    ``"lstm"`` -> ``("lstm", None, None)``; ``"hf:NAME_OR_PATH"`` -> ``("hf", NAME_OR_PATH,
    None)``; ``"open_clip:MODEL@TAG"`` -> ``("open_clip", MODEL, TAG)``.

    Args:
        spec: The spec string.

    Returns:
        The :class:`TextEncoderSpec`.

    Raises:
        ValueError: Naming ``text_encoder``, what was expected and what was received, if
            ``spec`` is not a string of one of the three forms.
    """
    if not isinstance(spec, str):
        raise ValueError(f"text_encoder: expected {_EXPECTED}, got {type(spec).__name__}")
    kind, sep, rest = spec.partition(":")
    if kind == "lstm" and not sep:
        return TextEncoderSpec("lstm")
    if kind == "hf" and rest.strip():
        return TextEncoderSpec("hf", rest)
    if kind == "open_clip" and rest.strip():
        model, at, pretrained = rest.partition("@")
        if model.strip() and (not at or pretrained.strip()):
            return TextEncoderSpec("open_clip", model, pretrained or None)
    raise ValueError(f"text_encoder: expected {_EXPECTED}, got {spec!r}")


def build_text_encoder(
    spec: str,
    output_dim: int,
    *,
    vocabulary: Vocabulary | None = None,
    architecture: str | os.PathLike[str] | None = None,
    **options: Any,
) -> TextEncoder:
    """Build the text encoder a spec names, with output width ``output_dim``.

    - ``"lstm"``: :meth:`LSTMTextEncoder.from_vocabulary(vocabulary, out_dim=output_dim,
      **options) <valfusion.encoders.LSTMTextEncoder.from_vocabulary>`.
    - ``"hf:NAME_OR_PATH"``: :meth:`HFTextEncoder.from_pretrained
      <valfusion.encoders.HFTextEncoder.from_pretrained>` (a hub name downloads because
      it is named).
    - ``"open_clip:MODEL[@PRETRAINED]"``: :meth:`OpenCLIPTextEncoder.from_name
      <valfusion.encoders.OpenCLIPTextEncoder.from_name>` (random weights unless
      ``PRETRAINED`` is given).

    With ``architecture`` (a folder written by
    :meth:`~valfusion.encoders.TextEncoder.save_architecture`), the transformer kinds are
    rebuilt from it with random weights instead, downloading nothing: the way to rebuild a
    saved model before loading its state dict.

    Args:
        spec: The spec (see :func:`parse_text_encoder_spec`).
        output_dim: Output feature size ``D``.
        vocabulary: The vocabulary of an ``"lstm"`` encoder (required for it, unused
            otherwise).
        architecture: Saved architecture folder of an ``"hf"`` or ``"open_clip"``
            encoder, or ``None``.
        **options: Constructor options of the kind built (``word_dim``, ``hidden_dim``,
            ``dropout``, ``norm`` for the LSTM; ``pooling``, ``norm``, ``freeze``,
            ``max_length`` for ``hf``; ``norm``, ``freeze`` for ``open_clip``).

    Returns:
        The text encoder.

    Raises:
        ValueError: If ``spec`` is malformed, or ``"lstm"`` is asked for without a
            vocabulary.
        ImportError: If the kind's optional library is not installed.
    """
    parsed = parse_text_encoder_spec(spec)
    if parsed.kind == "lstm":
        if vocabulary is None:
            raise ValueError(
                "vocabulary: the 'lstm' text encoder needs a valfusion.encoders.Vocabulary, "
                "got None"
            )
        return LSTMTextEncoder.from_vocabulary(vocabulary, out_dim=output_dim, **options)
    assert parsed.name is not None
    if parsed.kind == "hf":
        if architecture is not None:
            return HFTextEncoder.from_architecture(architecture, output_dim, **options)
        return HFTextEncoder.from_pretrained(parsed.name, output_dim, **options)
    if architecture is not None:
        return OpenCLIPTextEncoder.from_architecture(architecture, output_dim, **options)
    name = parsed.name if parsed.pretrained is None else f"{parsed.name}@{parsed.pretrained}"
    return OpenCLIPTextEncoder.from_name(name, output_dim, **options)
