"""Negatives gathered across processes: two real gloo processes vs one process on the whole batch.

One ``torch.multiprocessing.spawn`` (module fixture) runs every case in two processes and
saves what each rank saw; the tests below each compare one property with a single
process on the concatenated batch. float64 makes the 1e-6 tolerance meaningful.

What "equal" means (see ``valfusion.losses.distributed``): rank ``r`` returns
``(W / N) sum_{local i} l_i``, so the **mean over ranks** of the returned losses is the
single-process loss; the gradient reaching a local input is the gradient of the *sum* of
all ranks' losses, so **divided by W, as DDP's gradient average does**, it equals the
single-process gradient of those rows. With DDP itself, parameter gradients match directly.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from valfusion.losses import (
    HierarchicalMatchingLoss,
    batch_classification_loss,
    bidirectional_triplet_loss,
    gather_with_grad,
)

WORLD = 2
N, D_IN, D = 6, 5, 4
EVEN = [3, 3]
UNEVEN = [4, 2]  # shards of different sizes, e.g. an uneven last batch

FORMS = {
    "softmax": lambda x, y, gather=True: batch_classification_loss(x, y, 0.2, gather=gather),
    "triplet": lambda x, y, gather=True: bidirectional_triplet_loss(
        x, y, 0.5, semi_hard=True, gather=gather
    ),
    "triplet_hardest": lambda x, y, gather=True: bidirectional_triplet_loss(
        x, y, 0.5, semi_hard=False, gather=gather
    ),
}


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return (
        torch.randn(N, D, generator=g, dtype=torch.float64),
        torch.randn(N, D, generator=g, dtype=torch.float64),
    )


def global_features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return (
        torch.randn(N, D_IN, generator=g, dtype=torch.float64),
        torch.randn(N, D_IN, generator=g, dtype=torch.float64),
    )


def embedding_head() -> nn.Module:
    torch.manual_seed(7)
    return nn.Linear(D_IN, D).double()


def shard(x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    return x.split(sizes)[rank]


def loss_and_input_grads(fn, q: torch.Tensor, t: torch.Tensor):
    q, t = q.clone().requires_grad_(), t.clone().requires_grad_()
    loss = fn(q, t)
    loss.backward()
    return loss.detach(), q.grad, t.grad


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results: dict[str, object] = {}
        q, t = global_batch()
        for name, fn in FORMS.items():
            for sizes, tag in ((EVEN, "even"), (UNEVEN, "uneven")):
                results[f"{name}/{tag}"] = loss_and_input_grads(
                    fn, shard(q, sizes, rank), shard(t, sizes, rank)
                )
            results[f"{name}/local"] = fn(shard(q, EVEN, rank), shard(t, EVEN, rank), gather=False)

            # A DDP-wrapped embedding head: DDP averages parameter gradients over ranks.
            head = nn.parallel.DistributedDataParallel(embedding_head())
            xq, xt = global_features()
            fn(head(shard(xq, EVEN, rank)), head(shard(xt, EVEN, rank))).backward()
            results[f"{name}/ddp"] = [p.grad for p in head.module.parameters()]

        hierarchical = HierarchicalMatchingLoss("triplet", level_weights=[1.0, 0.5])
        out = hierarchical([shard(q, EVEN, rank)] * 2, [shard(t, EVEN, rank)] * 2)
        results["hierarchical"] = (out.total, out.levels)

        x = shard(q, UNEVEN, rank).clone().requires_grad_()
        gathered = gather_with_grad(x)
        (gathered * torch.arange(1.0, N + 1, dtype=torch.float64)[:, None]).sum().backward()
        results["gather"] = (gathered.detach(), x.grad)

        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def single_process(name: str):
    q, t = global_batch()
    return loss_and_input_grads(FORMS[name], q, t)


TOL = {"rtol": 1e-6, "atol": 1e-6}
CASES = [pytest.param(name, tag, id=f"{name}-{tag}") for name in FORMS for tag in ("even", "uneven")]


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "tag"), CASES)
def test_mean_of_rank_losses_equals_one_process_on_concatenated_batch(ranks, name, tag):
    expected, _, _ = single_process(name)
    mean_over_ranks = sum(r[f"{name}/{tag}"][0] for r in ranks) / WORLD
    torch.testing.assert_close(mean_over_ranks, expected, **TOL)


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "tag"), CASES)
def test_rank_averaged_input_gradients_equal_one_process_gradients(ranks, name, tag):
    _, grad_q, grad_t = single_process(name)
    averaged_q = torch.cat([r[f"{name}/{tag}"][1] for r in ranks]) / WORLD
    averaged_t = torch.cat([r[f"{name}/{tag}"][2] for r in ranks]) / WORLD
    torch.testing.assert_close(averaged_q, grad_q, **TOL)
    torch.testing.assert_close(averaged_t, grad_t, **TOL)


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(FORMS))
def test_ddp_parameter_gradients_equal_one_process_gradients(ranks, name):
    head = embedding_head()
    xq, xt = global_features()
    FORMS[name](head(xq), head(xt)).backward()
    for rank in ranks:
        torch.testing.assert_close(
            rank[f"{name}/ddp"], [p.grad for p in head.parameters()], **TOL
        )


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(FORMS))
def test_gather_false_uses_only_the_local_shard(ranks, name):
    q, t = global_batch()
    for rank, result in enumerate(ranks):
        expected = FORMS[name](shard(q, EVEN, rank), shard(t, EVEN, rank))
        torch.testing.assert_close(result[f"{name}/local"], expected, **TOL)


@pytest.mark.distributed
def test_hierarchical_matching_mean_over_ranks_equals_one_process(ranks):
    q, t = global_batch()
    expected = HierarchicalMatchingLoss("triplet", level_weights=[1.0, 0.5])([q, q], [t, t])
    total = sum(r["hierarchical"][0] for r in ranks) / WORLD
    torch.testing.assert_close(total, expected.total, **TOL)


@pytest.mark.distributed
def test_gather_with_grad_concatenates_shards_in_rank_order(ranks):
    q, _ = global_batch()
    for rank in ranks:
        torch.testing.assert_close(rank["gather"][0], q, rtol=0, atol=0)


@pytest.mark.distributed
def test_gather_with_grad_sends_each_shard_the_sum_of_every_ranks_gradient(ranks):
    # Each rank's objective is sum_j j * gathered_j, so row j's gradient is j from each rank.
    weights = torch.arange(1.0, N + 1, dtype=torch.float64)[:, None].expand(N, D)
    expected = (WORLD * weights).split(UNEVEN)
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["gather"][1], expected[rank], rtol=0, atol=0)


def test_gather_with_grad_is_the_identity_without_a_process_group():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
