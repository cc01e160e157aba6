"""The opening checks every dataset loader makes before it reads a file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from valfusion.data.errors import DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "test")


def check_root_and_splits(root: str | os.PathLike[str], splits: Sequence[str]) -> Path:
    """Require ``splits`` to be a non-empty subset of ``("train", "test")`` and ``root`` a folder.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: on an empty or unknown ``splits``.
        DataError: ``root`` is not a folder.
    """
    if not splits or any(s not in SPLIT_NAMES for s in splits):
        raise ValueError(
            f"splits: expected a non-empty subset of {SPLIT_NAMES}, got {tuple(splits)!r}"
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root
