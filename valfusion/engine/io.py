"""Atomic file writes: a reader (or a crash) never sees a truncated results or checkpoint file.

Each writer serialises into a temporary file in the destination's folder, flushes it to
disk, then ``os.replace``s it over the destination. ``os.replace`` is atomic on POSIX and
Windows when both paths are on one file system, which a sibling temporary file guarantees.
If anything fails before the rename, the temporary file is removed and the previous
version of the destination is left untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "atomic_write_torch"]


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return destination


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
