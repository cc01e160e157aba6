"""What the transformer text encoders share: projection head, freezing, atomic saving of files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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
