"""The package's one reader of tensor files (weights, checkpoints): no code runs, one-line errors.

Every ``.pt`` file valfusion opens goes through :func:`load_tensor_file`, which calls
``torch.load(weights_only=True)``: the unpickler builds tensors, numbers, strings, lists
and dicts and refuses anything else, so a crafted file (a pickle whose ``__reduce__``
calls ``os.system``) is rejected before any of its code runs. What can go wrong with the
file becomes one ``ValueError`` that names it:

- empty (0 bytes), truncated or corrupted: what PyTorch's reader reported, in one line;
- unsafe (a pickle that would call or build something other than tensors): refused, with
  the name it asked for, and without PyTorch's advice to retry with
  ``weights_only=False`` (which would run that code).

A model's weights may also be a ``.safetensors`` file (the format of the Hugging Face
hub: a JSON header and raw tensor bytes, no pickle at all), read by
:func:`load_safetensors_file` with the same kind of one-line errors. Reading one needs the
optional ``safetensors`` package (the ``demo`` extra).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["load_safetensors_file", "load_tensor_file", "safetensors_available"]

# torch's weights-only unpickler reports a refused global as "... GLOBAL posix.system ...".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_ONLY_FAILED = "Weights only load failed"
_MAX_REASON = 200


def _first_sentence(error: BaseException) -> str:
    """A one-line summary of a reader error: its first sentence, at most 200 characters."""
    text = " ".join(str(error).split())
    text = text.split(". ")[0].rstrip(".")
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_tensor_file(
    path: str | os.PathLike[str], *, argument: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name the file.

    Args:
        path: An existing file written by ``torch.save``.
        argument: The caller's argument the file came from, first word of every message
            (``"directory"``, ``"checkpoint"``).
        map_location: Where to put the tensors.

    Returns:
        The loaded object (tensors, numbers, strings, lists, dicts).

    Raises:
        ValueError: The file is empty, truncated or corrupted, or was refused because it
            is not a plain tensor file (loading it would run code).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{argument}: {path} is empty (0 bytes), not a PyTorch tensor file")
    try:
        with warnings.catch_warnings():
            # Raised for pickles not written by torch.save; the refusal below says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if _WEIGHTS_ONLY_FAILED in str(error):
            raise ValueError(_refusal(argument, path, str(error))) from None
        reading_error: Exception = error
    except Exception as error:
        # Whatever torch's reader raises for a damaged zip archive or pickle stream
        # (OSError, EOFError, RuntimeError, struct.error, KeyError, ...): the file's fault.
        reading_error = error
    if isinstance(reading_error, (PermissionError, IsADirectoryError)):
        raise ValueError(
            f"{argument}: cannot read {path} ({_first_sentence(reading_error)})"
        ) from reading_error
    raise ValueError(
        f"{argument}: {path} is truncated or corrupted, not a PyTorch tensor file "
        f"({_first_sentence(reading_error)})"
    ) from reading_error


def _refusal(argument: str, path: Path, message: str) -> str:
    """The one line for a file the weights-only unpickler refused (PyTorch's advice left out)."""
    found = _REFUSED_GLOBAL.search(message)
    if found:
        detail = f" (it asks to call or build {found.group(1)})"
    else:
        detail = " (it holds pickle instructions that torch.save does not write)"
    return (
        f"{argument}: refused to load {path}: it is not a plain tensor file{detail}; "
        "valfusion loads only tensors, numbers, strings, lists and dicts, so that opening a "
        "file never runs code"
    )


def safetensors_available() -> bool:
    """Whether the optional ``safetensors`` package can be imported."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def load_safetensors_file(
    path: str | os.PathLike[str], *, argument: str, map_location: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """``safetensors.torch.load`` of a file, with one-line errors that name the file.

    A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape,
    byte range) and the raw bytes: reading it never unpickles, so never runs code.

    Args:
        path: An existing file written by ``safetensors.torch.save``.
        argument: The caller's argument the file came from, first word of every message.
        map_location: Where to put the tensors.

    Returns:
        The state dict (name -> tensor).

    Raises:
        ValueError: The file is empty, truncated or corrupted, or the ``safetensors``
            package needed to read it is not installed.
    """
    path = Path(path)
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError(
            f"{argument}: {path} is a safetensors file and the safetensors package is not "
            "installed (pip install safetensors, or valfusion[demo])"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{argument}: cannot read {path} ({_first_sentence(error)})") from error
    if not data:
        raise ValueError(f"{argument}: {path} is empty (0 bytes), not a safetensors file")
    try:
        state = safetensors.torch.load(data)
    except Exception as error:
        # SafetensorError (header too small/large, invalid header length, bad JSON) or
        # the ValueError/RuntimeError torch raises for a byte range that does not fit.
        raise ValueError(
            f"{argument}: {path} is truncated or corrupted, not a safetensors file "
            f"({_first_sentence(error)})"
        ) from error
    return {name: value.to(map_location) for name, value in state.items()}
