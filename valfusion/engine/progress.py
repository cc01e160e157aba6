"""Progress reporting: a tqdm bar on a terminal, plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Training progress with loss and throughput.

    On a terminal (``stream.isatty()``) with tqdm installed (the ``demo`` extra) it draws a
    bar; otherwise it prints a line at about every tenth of the run (logs stay short),
    flushed at once, so that a file or a pipe gets each line while the run goes (a
    redirected stream is block-buffered otherwise); with ``enabled=False`` (other ranks,
    tests) it does nothing.

    Args:
        total: Steps of the run.
        initial: Steps already done (a resumed run).
        desc: Label in front of the bar.
        enabled: Report at all.
        bar: ``True``/``False`` force or forbid the bar; ``None``: bar on a terminal.
        stream: Where to write (default ``sys.stderr``).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        enabled: bool = True,
        bar: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.step = initial
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._line_every = max(1, total // 10)
        self._bar: Any = None
        if enabled and (bar if bar is not None else _isatty(self.stream)):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True,
                    unit="step", leave=True,
                )

    def update(self, step: int, *, loss: float, samples_per_second: float) -> None:
        """Advance to ``step`` and show the loss and throughput.

        Args:
            step: Steps done so far.
            loss: The loss of the last step.
            samples_per_second: Training throughput in triplets per second.
        """
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self.step)
            self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:.0f}", refresh=False)
        elif step % self._line_every == 0 or step == self.total:
            print(
                f"{self.desc}: step {step}/{self.total}  loss {loss:.4f}  {samples_per_second:.0f} samples/s",
                file=self.stream,
                flush=True,
            )
        self.step = step

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
