"""Metrics logs: what a run's history holds, written while it trains (CSV or TensorBoard).

A :class:`MetricsLogger` takes ``log_metrics(step, {name: value})`` and ``close()``, like
Lightning's ``CSVLogger`` / ``TensorBoardLogger`` with nothing else. The trainer logs each
row of its history as it records it, names prefixed by their part of the history:
``train/loss`` (mean over the last ``log_every`` steps), ``train/lr``,
``train/samples_per_second`` and ``eval/recall@K``.

A log always equals the history of the run it belongs to. When :meth:`Trainer.fit
<valfusion.engine.Trainer.fit>` starts (a new run, or a resumed one at the step of its
checkpoint) it opens the log afresh and logs the history it holds again: rows that an
interrupted run logged after its last checkpoint are gone, no step appears twice, and a
logger chosen only when resuming still gets the whole run.

- :class:`CSVLogger`: ``metrics.csv``, one row per call, appended and flushed at once so
  that ``tail -f`` follows the run; rewritten (atomically) when a metric appears that has
  no column yet and when a log is opened.
- :class:`TensorBoardLogger`: ``torch.utils.tensorboard.SummaryWriter`` event files (the
  ``tensorboard`` extra), flushed at each call; a writer opened on a folder hides the
  events written there before it (TensorBoard's ``purge_step``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

from valfusion._io import atomic_write
from valfusion.engine.config import LOGGERS

__all__ = [
    "CSV_FILE",
    "CSVLogger",
    "MetricsLogger",
    "TensorBoardLogger",
    "check_logger",
    "open_logger",
]

CSV_FILE = "metrics.csv"
"""Name of :class:`CSVLogger`'s file in its folder."""

_TENSORBOARD_MISSING = (
    "logger: 'tensorboard' needs the tensorboard package; install it with "
    "pip install 'valfusion[tensorboard]' or choose the 'csv' logger"
)


class MetricsLogger(Protocol):
    """What the trainer writes its metrics to."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` (``{name: value}``) at training step ``step``.

        Args:
            step: The optimiser steps done when the values were measured.
            metrics: Metric names and their values.
        """

    def close(self) -> None:
        """Write out what is pending and release the files."""


def _checked(step: int, metrics: Mapping[str, float]) -> dict[str, float]:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a non-negative integer, got {step!r}")
    checked = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or name == "step":
            raise ValueError(f"metrics: expected metric names other than 'step', got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metrics: expected a number for {name!r}, got {value!r}")
        checked[name] = float(value)
    return checked


class CSVLogger:
    """``FOLDER/metrics.csv``: a ``step`` column, then one column per metric name.

    Each :meth:`log_metrics` call is one row; a metric the row does not name is an empty
    cell. Values are written as Python writes floats (the shortest text that reads back
    to the same float). Opening the logger replaces any earlier file with a header only.

    Args:
        folder: The folder of the file (created if needed).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / CSV_FILE
        self._columns = ["step"]
        self._rows: list[dict[str, Any]] = []
        self._handle: IO[str] | None = None
        self._rewrite()

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row, flushed before returning.

        Args:
            step: The optimiser steps done when the values were measured.
            metrics: Metric names and their values.

        Raises:
            ValueError: ``step`` is not a non-negative integer, a name is ``"step"`` or
                empty, or a value is not a number.
        """
        row = {"step": step, **_checked(step, metrics)}
        self._rows.append(row)
        new = [name for name in row if name not in self._columns]
        if new:  # a new column: every earlier row gets its empty cell
            self._columns += new
            self._rewrite()
            return
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8", newline="")
        csv.writer(self._handle).writerow(self._cells(row))
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _cells(self, row: Mapping[str, Any]) -> list[Any]:
        return [row.get(column, "") for column in self._columns]

    def _rewrite(self) -> None:
        self.close()  # the handle would keep appending to the replaced file
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(self._columns)
        writer.writerows(self._cells(row) for row in self._rows)
        atomic_write(self.path, lambda handle: handle.write(text.getvalue().encode("utf-8")))


class TensorBoardLogger:
    """TensorBoard event files in ``folder``: one scalar series per metric name.

    Uses ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` extra), imported
    only here; scalars are stored as float32, as TensorBoard stores them. The writer
    starts with ``purge_step=0``, so TensorBoard hides every event written to ``folder``
    before it (an earlier attempt of the run, whose history the trainer logs again), and
    it is flushed after each call.

    Args:
        folder: The event files' folder (``tensorboard --logdir`` it or a parent).

    Raises:
        ImportError: The ``tensorboard`` package is not installed (one line naming the
            extra).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._writer = _summary_writer()(log_dir=str(self.folder), purge_step=0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Add one scalar per metric at ``step`` and flush.

        Args:
            step: The optimiser steps done when the values were measured.
            metrics: Metric names (TensorBoard tags) and their values.

        Raises:
            ValueError: ``step`` is not a non-negative integer, a name is ``"step"`` or
                empty, or a value is not a number.
        """
        for name, value in _checked(step, metrics).items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch.utils.tensorboard imports the tensorboard package
        raise ImportError(_TENSORBOARD_MISSING) from error
    return SummaryWriter


def check_logger(kind: str) -> None:
    """Fail now, before any training, if the logger ``kind`` cannot be used.

    Args:
        kind: One of :data:`~valfusion.engine.LOGGERS`.

    Raises:
        ValueError: ``kind`` is not one of :data:`~valfusion.engine.LOGGERS`.
        ImportError: ``"tensorboard"`` without the ``tensorboard`` package.
    """
    if kind not in LOGGERS:
        raise ValueError(f"logger: expected one of {LOGGERS}, got {kind!r}")
    if kind == "tensorboard":
        _summary_writer()


def open_logger(kind: str, folder: str | os.PathLike[str]) -> MetricsLogger | None:
    """A fresh metrics log of the kind a :class:`~valfusion.engine.TrainConfig` names.

    Args:
        kind: One of :data:`~valfusion.engine.LOGGERS`.
        folder: Where the log goes (``RUN_DIR/logs`` for the trainer).

    Returns:
        A :class:`CSVLogger` or a :class:`TensorBoardLogger`; ``None`` for ``"none"``.

    Raises:
        ValueError: ``kind`` is not one of :data:`~valfusion.engine.LOGGERS`.
        ImportError: ``"tensorboard"`` without the ``tensorboard`` package.
    """
    check_logger(kind)
    if kind == "csv":
        return CSVLogger(folder)
    if kind == "tensorboard":
        return TensorBoardLogger(folder)
    return None
