"""The error raised for bad data: it names the file and line to fix."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or missing data, raised before training starts.

    The message starts with ``path:line:`` (or ``path:`` for whole-file problems)
    so the user knows what to fix: a missing image, a malformed JSON line, an empty
    split, a target missing from the gallery.
    """
