"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint holds the model, optimiser, scheduler and gradient-scaler states, the step,
the sampler position, the random-number-generator states of every process (as tensors)
and the run's configuration and history. It contains only tensors, numbers, strings,
lists and dicts, so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code. Files are written atomically.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
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


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``.

    Args:
        directory: A run's checkpoint folder.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


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
