"""One process or many: the ``torchrun`` environment, the process group and rank-0-only work.

The same command runs alone or under ``torchrun --nproc_per_node=N``: when the launcher's
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
say there are several processes, :func:`init_distributed` joins the group (``gloo`` on
CPU, ``nccl`` on CUDA). A process group the caller already initialised is used as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the training processes.

    Attributes:
        rank: Global rank ``0 <= rank < world_size``.
        world_size: Number of processes.
        local_rank: Rank on this machine (selects the GPU).
        owns_group: Whether :func:`init_distributed` created the process group (and
            :meth:`close` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Several processes share the work (a process group is up)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer environment variable, got {value!r}") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The device to train on.

    Args:
        device: ``"auto"`` (``cuda:<local_rank>`` when CUDA is available, else CPU),
            ``"cpu"``, ``"cuda"`` (``cuda:<local_rank>``) or ``"cuda:N"``.
        local_rank: This process's rank on its machine.

    Returns:
        The ``torch.device``.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available here")
        return torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device(device)
    return torch.device(device)


def init_distributed(device: str = "auto") -> tuple[DistributedContext, torch.device]:
    """Join the process group described by the launcher's environment, if any.

    Args:
        device: As for :func:`resolve_device`; its type picks the backend (``nccl`` for
            CUDA, ``gloo`` for CPU).

    Returns:
        ``(context, device)``. Alone (no ``WORLD_SIZE`` > 1 and no initialised group) the
        context is rank 0 of 1.

    Raises:
        ValueError: Inconsistent launcher variables or an unavailable device.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        return DistributedContext(rank, world_size, local_rank), resolve_device(device, local_rank)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK/WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got {rank} and {world_size}")
    resolved = resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(), resolved
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, owns_group=True), resolved
