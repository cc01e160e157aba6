"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint holds the model, optimiser, scheduler and gradient-scaler states, the step,
the sampler position, the random-number-generator states of every process (as tensors)
and the run's configuration, identity and history. It contains only tensors, numbers,
strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code. Files are written atomically; a file damaged anyway (a full
disk, a copy cut short) is skipped by :func:`load_latest_checkpoint`, which falls back to
the newest one that loads, and :func:`prune_checkpoints` keeps a folder to its newest few.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from valfusion._tensor_files import load_tensor_file
from valfusion.engine.io import atomic_write_torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "checkpoint_path",
    "gather_rng_states",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "valfusion.checkpoint/1"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def capture_rng_state() -> dict[str, Tensor]:
    """This process's random-number-generator states, as tensors.

    Returns:
        ``{"torch": (5056,) uint8, "cuda": (num_gpus, n) uint8 (absent without CUDA),
        "python": (626,) int64 (version then the Mersenne-Twister words),
        "python_gauss": () float64 (NaN when none is cached)}``.
    """
    version, words, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if gauss is None else gauss, dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Tensor]) -> None:
    """Restore states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    values = state["python"].tolist()
    gauss = float(state["python_gauss"])
    random.setstate((values[0], tuple(values[1:]), None if gauss != gauss else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))


def gather_rng_states(world_size: int) -> list[dict[str, Tensor]]:
    """The RNG states of every process, rank order (collective under a process group)."""
    local = capture_rng_state()
    if world_size == 1:
        return [local]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in local.items()})
    return gathered


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """``directory/step_0000042.pt``."""
    return Path(directory) / f"step_{step:07d}.pt"


def _checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_N.pt`` in ``directory``, highest step first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``.

    The file is not opened; :func:`load_latest_checkpoint` finds the newest one that loads.

    Args:
        directory: A run's checkpoint folder.
    """
    found = _checkpoints(directory)
    return found[0][1] if found else None


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: Destination file.
        state: The checkpoint content (see the module docstring); ``format`` is added.

    Returns:
        The path written.
    """
    return atomic_write_torch(path, {"format": CHECKPOINT_FORMAT, **state})


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: The checkpoint file.
        map_location: Where to put its tensors.

    Returns:
        The checkpoint dictionary.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Naming the file, if it is empty, truncated or corrupted, is refused as
            unsafe (a pickle that would run code: nothing in it is executed), or is not a
            valfusion checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    state = load_tensor_file(path, argument="checkpoint", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a {CHECKPOINT_FORMAT} file")
    return state


def _why_unreadable(path: Path, error: Exception) -> str:
    if path.stat().st_size == 0:
        return "empty file"
    first = str(error).strip().split("\n")[0].split(". ")[0]
    return f"truncated or corrupt ({type(error).__name__}: {first})" if first else f"truncated or corrupt ({type(error).__name__})"


def _report_on_stderr(path: Path, reason: str) -> None:
    print(f"checkpoint: skipped {path}: {reason}", file=sys.stderr, flush=True)


def load_latest_checkpoint(
    directory: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    on_skip: Callable[[Path, str], object] | None = _report_on_stderr,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads, falling back past damaged files.

    Checkpoints are tried from the highest step down; one that cannot be read (empty,
    truncated, corrupt, not a valfusion checkpoint) is skipped and reported.

    Args:
        directory: A run's checkpoint folder.
        map_location: Where to put the tensors.
        on_skip: Called with ``(path, reason)`` for each file skipped; by default a line
            on stderr (``checkpoint: skipped PATH: REASON``); ``None`` stays silent.

    Returns:
        ``(path, state)`` of the newest intact checkpoint, or ``None`` when the folder
        holds no checkpoint file at all.

    Raises:
        ValueError: Checkpoint files exist but none loads (each file and reason is named).
    """
    skipped = []
    for _, path in _checkpoints(directory):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as error:  # whatever stops a file from loading makes it not intact
            reason = _why_unreadable(path, error)
        skipped.append(f"{path.name}: {reason}")
        if on_skip is not None:
            on_skip(path, reason)
    if skipped:
        raise ValueError(f"checkpoint: no intact checkpoint in {directory} ({'; '.join(skipped)})")
    return None


def prune_checkpoints(directory: str | os.PathLike[str], keep: int, *, up_to: int | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints of ``directory``.

    Args:
        directory: A run's checkpoint folder.
        keep: How many to keep; ``0`` keeps every one.
        up_to: Consider only checkpoints up to this step (the one just written): files of
            later steps, left by an earlier attempt of the run, are neither counted nor
            deleted, so the newest file written is always kept.

    Returns:
        The files deleted, highest step first.

    Raises:
        ValueError: ``keep`` is negative.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep: expected a non-negative integer, got {keep!r}")
    if keep == 0:
        return []
    candidates = [path for step, path in _checkpoints(directory) if up_to is None or step <= up_to]
    removed = candidates[keep:]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
