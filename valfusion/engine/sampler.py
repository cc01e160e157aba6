"""A seeded, sharded, resumable order over the training triplets."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[int]):
    """Shuffle each epoch from ``(seed, epoch)``, shard over processes, start anywhere.

    Like :class:`torch.utils.data.DistributedSampler` with ``drop_last=True``: epoch ``e``
    is the permutation ``randperm(N, generator=seed + e)`` cut to a multiple of
    ``world_size``; rank ``r`` takes every ``world_size``-th index from position ``r``.
    :meth:`set_epoch` also takes a ``start`` position so that a resumed run continues the
    epoch exactly where the interrupted run stopped, without reading the skipped images.

    Args:
        size: Number of training triplets ``N``.
        seed: Base seed of the shuffling.
        rank: This process's rank.
        world_size: Number of processes.

    Raises:
        ValueError: If ``size < world_size`` or the rank is out of range.
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
        if size < world_size:
            raise ValueError(f"size: expected at least world_size = {world_size} items, got {size}")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        """Indices each process sees per epoch: ``N // world_size``."""
        return self.size // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and the position in this rank's shard to start at.

        Args:
            epoch: The epoch; the permutation depends only on ``(seed, epoch)``.
            start: How many of this rank's indices of the epoch were already used
                (a resumed run continues from there).
        """
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start: expected a position in [0, {self.per_rank}], got {start}")
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)[: self.per_rank * self.world_size]
        shard = order[self.rank :: self.world_size][self.start :]
        return iter(shard.tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start
