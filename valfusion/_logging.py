"""Log records: the ``valfusion`` logger, and the console handler of the ``valfusion`` command.

Modules log to ``logging.getLogger(__name__)`` (``valfusion.engine.trainer``,
``valfusion.engine.demo``...), children of the ``valfusion`` logger. As a library should,
the package gives that logger only a ``logging.NullHandler`` (in ``valfusion/__init__.py``):
the application decides where records go, e.g. ``logging.basicConfig(level=logging.INFO)``.
The ``valfusion`` command sends them to stderr with :func:`log_to_console`.

This module imports only the standard library, so that the command can use it without
importing torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

__all__ = ["LOGGER_NAME", "log_to_console"]

LOGGER_NAME = "valfusion"


class _ConsoleFormatter(logging.Formatter):
    """Information as it is; a warning or an error as one line ``PROG: warning: ...``."""

    def __init__(self, prog: str) -> None:
        super().__init__("%(message)s")
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno < logging.WARNING:
            return text
        return f"{self.prog}: {record.levelname.lower()}: {' '.join(text.split())}"


class _ConsoleHandler(logging.StreamHandler):
    """Each record on the current ``sys.stderr``, flushed, written around a tqdm bar.

    The stream is looked up at each record (as ``logging.lastResort`` does), so that a
    caller that swaps ``sys.stderr`` (tests, ``contextlib.redirect_stderr``) gets it.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ sets it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        bars = sys.modules.get("tqdm.auto")  # a bar exists only once tqdm is imported
        if bars is None:
            super().emit(record)
            return
        try:
            bars.tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def log_to_console(prog: str, level: int = logging.INFO) -> Iterator[logging.Handler]:
    """Show the ``valfusion`` logger's records on stderr while the block runs.

    Records at ``level`` and above are written one per line and flushed at once, also
    when stderr is a file or a pipe; warnings and errors read ``PROG: warning: ...``.
    The logger's level and handlers are restored afterwards.

    Args:
        prog: The command's name, in front of warnings and errors.
        level: The least severe level shown.

    Yields:
        The handler.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handler = _ConsoleHandler()
    handler.setFormatter(_ConsoleFormatter(prog))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
