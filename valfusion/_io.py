"""The package's one atomic writer: a reader (or a crash) never sees a truncated file.

Every file valfusion writes (weights, configurations, vocabularies, checkpoints, results,
pictures, benchmark tables) goes through :func:`atomic_write`:

1. the bytes go to a temporary sibling ``.NAME.<random>.tmp``, created with
   ``os.open(..., 0o666)`` so that the process umask applies exactly as it does to
   ``open(path, "w")`` (``tempfile.mkstemp`` would force mode 0600);
2. the temporary file is flushed and ``fsync``-ed;
3. ``os.replace`` renames it over the destination (atomic on POSIX and Windows on one
   file system, which a sibling guarantees), and the folder is ``fsync``-ed so that the
   rename itself survives a power cut (POSIX only);
4. if anything fails before the rename, the temporary file is removed and the previous
   version of the destination is untouched.

A process killed between steps 1 and 3 leaves a temporary file behind;
:func:`remove_stale_temporaries` removes those (the training engine calls it when a run
starts or resumes).

This module imports only the standard library so that every layer of the package can
use it without an import cycle; :mod:`valfusion.engine.io` is its public face.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["CACHE_ENV", "TEMPORARY_PATTERN", "atomic_write", "cache_dir", "remove_stale_temporaries"]

CACHE_ENV = "VALFUSION_CACHE_DIR"
"""Environment variable naming valfusion's cache folder; ``off`` (or empty) turns caching off."""


def cache_dir() -> Path | None:
    """valfusion's cache folder, from the environment.

    ``$VALFUSION_CACHE_DIR`` when set (``off`` or empty: no cache), else
    ``$XDG_CACHE_HOME/valfusion``, else ``~/.cache/valfusion``.

    Returns:
        The folder (perhaps not created yet), or ``None`` when caching is off.
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: absolute only
    return base / "valfusion"


#: Names of the temporary files :func:`atomic_write` creates: ``.NAME.<16 hex>.tmp``.
TEMPORARY_PATTERN = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened; NTFS journals the rename
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the data is synced
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary sibling that replaces ``path``.

    Args:
        path: destination file; its folder is created if needed.
        write: called once with a binary file handle open on the temporary file.

    Returns:
        The destination path.

    The new file gets the mode ``open(path, "w")`` would give it (``0o666`` less the
    umask). On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed, the exception propagates and ``path`` keeps its previous content.
    """
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = destination.parent / f".{destination.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 2**-64 per attempt
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(destination.parent)
    return destination


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_write` calls left in ``folder``.

    Only names matching :data:`TEMPORARY_PATTERN` are touched; sub-folders are not
    searched. Call it only when no other process is writing into ``folder``.

    Args:
        folder: the folder to clean; a missing folder is not an error.

    Returns:
        The paths removed, sorted.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if TEMPORARY_PATTERN.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
