"""Gathering embeddings across processes so that every process sees the global batch.

With ``W`` processes each holding a shard of ``B_r`` pairs (``N = sum_r B_r``), a
pairwise loss on rank ``r`` scores its **local** anchors against the **global** set of
candidates, with each anchor's positive at its global row ``offset_r + i``.

Gradients flow back to the local shard through the gather (its backward sums, over all
ranks, the gradient each rank's loss sends to that shard). A rank therefore returns

.. math::

    \\mathcal{L}_r = \\frac{W}{N} \\sum_{i \\in \\text{rank } r} \\ell_i ,

the local mean when the shards are equal. Then the mean of ``L_r`` over ranks is the
loss of one process on the concatenated batch, ``(1/N) sum_i l_i``, and after DDP
averages parameter gradients over ranks they equal that single process's gradients.
(The gradient that reaches a local *input* shard is ``W`` times the single-process one,
because every rank's loss contributes to it; DDP's division by ``W`` undoes exactly that.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad"]


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _shard_sizes(x: Tensor) -> list[int]:
    # One tiny collective so that shards of different sizes (an uneven last batch) are
    # gathered correctly; all_gather itself needs equal shapes and aborts the process
    # (gloo) when they differ.
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in torch.cat(sizes).tolist()]


def _all_gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    # torch.distributed.nn.functional.all_gather is the public autograd-aware gather across
    # the supported torch versions (>= 2.4) and backends (gloo included). torch 2.13 marks
    # it deprecated in favour of the private _functional_collectives, whose names are still
    # changing, so its warning is silenced here rather than shown on every training step.
    from torch.distributed.nn import functional as dist_nn

    largest = max(sizes)
    padded = x
    if x.shape[0] < largest:
        padded = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*all_gather is deprecated", category=FutureWarning
        )
        parts = dist_nn.all_gather(padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every process along dim 0, with gradients to the local shard.

    .. math::

        \\mathrm{gather}(x) = [x^{(0)}; x^{(1)}; \\dots; x^{(W-1)}]

    Shards may differ in size along dim 0 (other dims must match). The backward pass
    sums, over ranks, the gradient each rank sends to this rank's rows, so every rank must
    call ``backward`` (as in DDP). The identity when ``torch.distributed`` is unavailable,
    not initialised, or has a world size of 1. Every rank must call it (it is a collective).

    Args:
        x: local shard, shape ``(B_r, *)``.

    Returns:
        The global batch, shape ``(N, *)`` with ``N = sum_r B_r``, ordered by rank;
        ``x`` itself when there is nothing to gather.
    """
    if _world_size() == 1:
        return x
    return _all_gather_rows(x, _shard_sizes(x))


@dataclass(frozen=True)
class Candidates:
    """The candidates a rank scores its local anchors against (internal).

    Attributes:
        rows: candidate embeddings, shape ``(N, D)``: the global batch when gathering,
            else the local one.
        offset: global row of the first local anchor's positive.
        world: number of processes the candidates came from (1 when not gathering).
    """

    rows: tuple[Tensor, ...]
    offset: int
    world: int

    @property
    def count(self) -> int:
        """``N``, the number of candidates (the global batch size when gathering)."""
        return self.rows[0].shape[0]

    @property
    def scale(self) -> float:
        """``W / N``: turns a sum over local anchors into this rank's share of the mean."""
        return self.world / self.count


def gather_candidates(*xs: Tensor, gather: bool) -> Candidates:
    """Gather equally sized local tensors ``xs`` (each ``(B_r, D)``) as candidates (internal)."""
    world = _world_size() if gather else 1
    if world == 1:
        return Candidates(rows=xs, offset=0, world=1)
    sizes = _shard_sizes(xs[0])
    return Candidates(
        rows=tuple(_all_gather_rows(x, sizes) for x in xs),
        offset=sum(sizes[: dist.get_rank()]),
        world=world,
    )
