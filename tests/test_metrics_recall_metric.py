"""RecallAtK (torchmetrics.Metric): batch updates and real 2-process gloo DDP give the recall of all queries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from valfusion.metrics import RecallAtK, recall_at_k

KS = (1, 5, 20)


def make_data(seed: int, num_queries: int, gallery_size: int, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    gallery = torch.randn(gallery_size, dim, generator=gen)
    targets = torch.randint(0, gallery_size, (num_queries,), generator=gen)
    queries = gallery[targets] + 0.8 * torch.randn(num_queries, dim, generator=gen)
    # Exclude an item other than the target (the "reference image").
    offset = torch.randint(1, gallery_size, (num_queries,), generator=gen)
    exclude = (targets + offset) % gallery_size
    return queries, gallery, targets, exclude


def as_floats(metric_output: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: value.item() for name, value in metric_output.items()}


@given(seed=st.integers(0, 1000), num_queries=st.integers(1, 40), batch=st.integers(1, 16))
def test_batched_updates_equal_recall_at_k_on_all_queries(seed, num_queries, batch):
    queries, gallery, targets, exclude = make_data(seed, num_queries, gallery_size=30)
    metric = RecallAtK(gallery, ks=KS)
    for start in range(0, num_queries, batch):
        stop = start + batch
        metric.update(queries[start:stop], targets=targets[start:stop], exclude=exclude[start:stop])
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    assert as_floats(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_reset_forgets_previous_queries():
    queries, gallery, targets, exclude = make_data(0, 20, 30)
    metric = RecallAtK(gallery, ks=KS)
    metric.update(queries[:10], targets=targets[:10], exclude=exclude[:10])
    metric.reset()
    metric.update(queries[10:], targets=targets[10:], exclude=exclude[10:])
    expected = recall_at_k(queries[10:], gallery, targets=targets[10:], exclude=exclude[10:], ks=KS)
    assert as_floats(metric.compute()) == pytest.approx(expected.as_dict(), abs=1e-6)


def test_gallery_given_later_with_set_gallery_is_used():
    queries, gallery, targets, _ = make_data(1, 20, 30)
    metric = RecallAtK(ks=KS, similarity="euclidean")
    metric.set_gallery(gallery)
    metric.update(queries, targets=targets)
    expected = recall_at_k(queries, gallery, targets=targets, ks=KS, similarity="euclidean")
    assert as_floats(metric.compute()) == pytest.approx(expected.as_dict(), abs=1e-6)


def test_replacing_the_gallery_ranks_against_the_new_one():
    queries, gallery, targets, _ = make_data(2, 20, 30)
    metric = RecallAtK(torch.randn(30, 8), ks=KS)
    metric.set_gallery(gallery)
    metric.update(queries, targets=targets)
    expected = recall_at_k(queries, gallery, targets=targets, ks=KS)
    assert as_floats(metric.compute()) == pytest.approx(expected.as_dict(), abs=1e-6)


def test_label_targets_equal_recall_at_k_with_labels():
    queries, gallery, _, _ = make_data(3, 24, 30)
    gallery_labels = torch.arange(30) % 6
    query_labels = torch.arange(24) % 6
    metric = RecallAtK(gallery, gallery_labels=gallery_labels, ks=KS)
    metric.update(queries[:11], labels=query_labels[:11])
    metric.update(queries[11:], labels=query_labels[11:])
    expected = recall_at_k(queries, gallery, query_labels=query_labels, gallery_labels=gallery_labels, ks=KS)
    assert as_floats(metric.compute()) == pytest.approx(expected.as_dict(), abs=1e-6)


def test_query_without_target_counts_as_miss_when_asked():
    gallery = torch.eye(4)
    metric = RecallAtK(gallery, ks=(1,), similarity="dot", missing="miss")
    metric.update(gallery[:2], targets=[[0], []])
    assert metric.compute()["recall@1"].item() == 0.5


def test_query_without_target_raises_by_default():
    metric = RecallAtK(torch.eye(4), ks=(1,))
    with pytest.raises(ValueError, match="targets: 1 of 2 queries have no correct target"):
        metric.update(torch.eye(4)[:2], targets=[[0], []])


def test_update_without_gallery_raises():
    with pytest.raises(ValueError, match="gallery: not set"):
        RecallAtK().update(torch.randn(2, 4), targets=[0, 1])


def test_update_with_other_dimension_raises():
    metric = RecallAtK(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"queries: expected embedding dim D .* = 4"):
        metric.update(torch.randn(2, 3), targets=[0, 1])


def test_update_with_other_dtype_raises():
    metric = RecallAtK(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"queries: expected dtype torch.float32 \(as the gallery\)"):
        metric.update(torch.randn(2, 4, dtype=torch.float64), targets=[0, 1])


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric RecallAtK was called before")
def test_compute_before_any_update_raises():
    with pytest.raises(ValueError, match=r"queries: RecallAtK\.compute"):
        RecallAtK(torch.randn(5, 4)).compute()


def test_k_below_one_raises():
    with pytest.raises(ValueError, match="ks: expected integers K >= 1"):
        RecallAtK(torch.randn(5, 4), ks=(0, 5))


# ---------------------------------------------------------------- real distributed


WORLD_SIZE = 2
NUM_QUERIES, GALLERY_SIZE = 37, 50


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        queries, gallery, targets, exclude = make_data(7, NUM_QUERIES, GALLERY_SIZE)
        # Uneven shards, several batches each, as a DistributedSampler without padding gives.
        shard = torch.arange(rank, NUM_QUERIES, WORLD_SIZE)
        metric = RecallAtK(gallery, ks=KS)
        for batch in shard.split(5):
            metric.update(queries[batch], targets=targets[batch], exclude=exclude[batch])
        torch.save(as_floats(metric.compute()), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_queries_under_ddp_give_single_process_recall(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    queries, gallery, targets, exclude = make_data(7, NUM_QUERIES, GALLERY_SIZE)
    single = RecallAtK(gallery, ks=KS)
    single.update(queries, targets=targets, exclude=exclude)
    expected = as_floats(single.compute())
    for rank in range(WORLD_SIZE):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(expected, abs=1e-6)
