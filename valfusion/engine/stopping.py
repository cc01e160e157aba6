"""Stopping a run without losing it: signals, non-finite losses and data errors.

While :meth:`Trainer.fit <valfusion.engine.Trainer.fit>` trains, :class:`StopSignals`
turns SIGINT (Ctrl-C) and SIGTERM (a scheduler's or ``kill``'s request) into a flag; the
trainer looks at it at every step boundary, writes a checkpoint of the state after the
last completed step, and raises :class:`TrainingStopped`. A non-finite loss (found before
the optimiser step, so the weights are still good) and an error while reading a batch
end the same way. Under ``torch.distributed`` the processes agree at each boundary, so
they all stop at the same step and write one checkpoint together.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["STOP_REASONS", "StopSignals", "TrainingStopped"]

STOP_REASONS: tuple[str, ...] = ("signal", "non-finite loss", "data error")
"""Why :class:`TrainingStopped` was raised."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(Exception):
    """Training stopped before its end; the state after the last completed step was saved.

    Args:
        message: What happened and where the checkpoint is (one line).
        reason: One of :data:`STOP_REASONS`.
        step: Steps completed, which is the checkpoint's step.
        checkpoint: The checkpoint holding that state, or ``None`` when the run has no
            run directory (the state is still in the :class:`~valfusion.engine.Trainer`).
        signal: The signal number when ``reason`` is ``"signal"``, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        step: int,
        checkpoint: Path | None = None,
        signal: int | None = None,
    ) -> None:
        if reason not in STOP_REASONS:
            raise ValueError(f"reason: expected one of {STOP_REASONS}, got {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.step = step
        self.checkpoint = checkpoint
        self.signal = signal


class StopSignals:
    """While entered, SIGINT and SIGTERM only record a request to stop.

    The first signal received is kept in :attr:`received`; later ones change nothing
    (under ``torchrun`` the launcher forwards a copy of the signal it receives, and then
    kills the workers with SIGKILL if they have not stopped within its timeout). The
    previous handlers are restored on exit. Outside the main thread (where Python cannot
    install handlers) it does nothing and :attr:`received` stays ``None``.

    Example::

        with StopSignals() as signals:
            for batch in loader:
                if signals.received is not None:
                    break  # save, then stop
                step(batch)
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
