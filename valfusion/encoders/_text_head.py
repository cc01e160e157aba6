"""The end shared by the transformer text encoders: projection, batch norm, freezing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from torch import nn

from valfusion._io import atomic_write
from valfusion._validation import check_choice, check_positive_int

NORMS = ("batch", None)


def projection_head(in_dim: int, output_dim: int, norm: str | None) -> tuple[nn.Linear, nn.Module]:
    """``Linear(in_dim, output_dim)`` and ``BatchNorm1d(output_dim)`` (or identity).

    The batch norm keeps each text channel at unit scale, as the LSTM's end does: the
    composers concatenate the text feature with batch-normalised image features.
    """
    check_positive_int(output_dim, "output_dim")
    check_choice(norm, "norm", NORMS)
    norm_layer: nn.Module = nn.BatchNorm1d(output_dim) if norm == "batch" else nn.Identity()
    return nn.Linear(in_dim, output_dim), norm_layer


def check_texts(texts: object) -> list[str]:
    """Require a non-empty sequence of strings (not a bare ``str``)."""
    if isinstance(texts, str):
        raise ValueError(
            "texts: expected a sequence of strings, got a single str; wrap it in a list"
        )
    if not isinstance(texts, Sequence):
        raise ValueError(f"texts: expected a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts: expected at least one text, got an empty sequence")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"texts: expected strings, got {type(text).__name__} at position {index}"
            )
    return texts


def freeze_(module: nn.Module) -> None:
    """Stop gradients into ``module`` and put it in eval mode (no dropout)."""
    module.requires_grad_(False)
    module.eval()


def save_atomically(directory: str | os.PathLike[str], save: Callable[[str], object]) -> None:
    """Run a library's ``save(folder)`` in a scratch folder, then copy each file it wrote
    into ``directory`` with the package's atomic writer (no half-written file is ever seen).
    """
    target = Path(directory)
    with tempfile.TemporaryDirectory(prefix="valfusion-save-") as scratch:
        save(scratch)
        for source in sorted(Path(scratch).rglob("*")):
            if source.is_file():
                destination = target / source.relative_to(scratch)
                destination.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(destination, _writer(source.read_bytes()))


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda handle: handle.write(data)
