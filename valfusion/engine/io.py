"""Atomic file writes: a reader (or a crash) never sees a truncated results or checkpoint file.

These are typed conveniences over the package's one writer, :func:`valfusion._io.atomic_write`:
the bytes go to a temporary sibling ``.NAME.<random>.tmp`` (created with the user's
umask, as ``open`` would), which is flushed, ``fsync``-ed and then ``os.replace``-d over
the destination; the folder is ``fsync``-ed after the rename. If anything fails before
the rename, the temporary file is removed and the previous version of the destination is
left untouched. :func:`remove_stale_temporaries` removes the temporaries a killed
process left behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from valfusion._io import atomic_write as _atomic_write
from valfusion._io import remove_stale_temporaries

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_torch",
    "remove_stale_temporaries",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename).

    Args:
        path: destination file; its folder is created if needed.
        data: the bytes to write.

    Returns:
        The destination path.
    """
    return _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then rename).

    Args:
        path: destination file; its folder is created if needed.
        text: the text to write.
        encoding: text encoding.

    Returns:
        The destination path.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], value: Any, *, indent: int = 2) -> Path:
    """Serialise ``value`` as JSON and write it to ``path`` atomically.

    The value is serialised before the temporary file is opened, so a value that is not
    JSON-serialisable raises ``TypeError`` and leaves no file behind.

    Args:
        path: destination file; its folder is created if needed.
        value: a JSON-serialisable value.
        indent: JSON indentation.

    Returns:
        The destination path.
    """
    return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=False) + "\n")


def atomic_write_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, then rename).

    Args:
        path: destination file; its folder is created if needed.
        obj: what ``torch.save`` accepts; keep it to tensors, numbers, strings, lists and
            dicts so that it loads with ``torch.load(weights_only=True)``.

    Returns:
        The destination path.
    """
    return _atomic_write(path, lambda handle: torch.save(obj, handle))
