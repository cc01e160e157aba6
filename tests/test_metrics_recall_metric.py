"""RecallAtK (torchmetrics.Metric): batch updates and real 2-process gloo DDP give the recall of all queries.

The rest of the torchmetrics contract is held to torchmetrics itself: compute before update
(torchmetrics' warning, and the value its retrieval metrics return without data), forward
with a partial state against the full-state path, merge_state, clone, state_dict, and plot
through torchmetrics' helper (drawn for real with the Agg backend, and in a real
interpreter without matplotlib).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torchmetrics.retrieval import RetrievalHitRate

from valfusion.metrics import RecallAtK, recall_at_k

ROOT = Path(__file__).resolve().parents[1]
COMPUTE_BEFORE_UPDATE = r"The ``compute`` method of metric RecallAtK was called before the ``update`` method"

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


def test_compute_before_any_update_warns_and_returns_what_torchmetrics_retrieval_returns():
    # torchmetrics' retrieval metrics return tensor(0.) when no query is scored (their
    # compute's explicit no-result value; here: the only query has no positive target).
    no_query = RetrievalHitRate(top_k=5, empty_target_action="skip")
    no_query.update(torch.rand(4), torch.zeros(4, dtype=torch.bool), indexes=torch.zeros(4, dtype=torch.long))
    no_result = no_query.compute()
    with pytest.warns(UserWarning, match=COMPUTE_BEFORE_UPDATE):
        result = RecallAtK(torch.randn(5, 4), ks=(1, 5)).compute()
    assert list(result) == ["recall@1", "recall@5"]
    for value in result.values():
        assert value.shape == no_result.shape and value.dtype == no_result.dtype
        assert value.item() == no_result.item()


def test_compute_after_only_empty_batches_returns_zero_without_warning(recwarn):
    metric = RecallAtK(torch.randn(5, 4), ks=(1,))
    metric.update(torch.randn(0, 4), targets=[])
    assert metric.compute()["recall@1"].item() == 0.0
    assert not [w for w in recwarn if "compute" in str(w.message)]


def test_k_below_one_raises():
    with pytest.raises(ValueError, match="ks: expected integers K >= 1"):
        RecallAtK(torch.randn(5, 4), ks=(0, 5))


# ---------------------------------------------------------------- the Metric contract


def update_in_batches(metric, queries, targets, exclude, batch=6):
    for start in range(0, len(queries), batch):
        stop = start + batch
        metric.update(queries[start:stop], targets=targets[start:stop], exclude=exclude[start:stop])


class FullStateRecallAtK(RecallAtK):
    """The path torchmetrics takes when a metric's update may depend on its earlier state."""

    full_state_update = True


@given(seed=st.integers(0, 1000), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_partial_state_forward_equals_full_state_forward(seed, sizes):
    queries, gallery, targets, exclude = make_data(seed, sum(sizes), gallery_size=25)
    partial, full = RecallAtK(gallery, ks=KS), FullStateRecallAtK(gallery, ks=KS)
    start = 0
    for size in sizes:
        batch = slice(start, start + size)
        start += size
        got = partial(queries[batch], targets=targets[batch], exclude=exclude[batch])
        want = full(queries[batch], targets=targets[batch], exclude=exclude[batch])
        expected = recall_at_k(queries[batch], gallery, targets=targets[batch], exclude=exclude[batch], ks=KS)
        assert as_floats(got) == pytest.approx(expected.as_dict(), abs=1e-6)
        assert as_floats(got) == pytest.approx(as_floats(want), abs=1e-6)
    overall = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    assert as_floats(partial.compute()) == pytest.approx(overall, abs=1e-6)
    assert as_floats(full.compute()) == pytest.approx(overall, abs=1e-6)


def test_merge_state_gives_recall_of_both_query_sets():
    queries, gallery, targets, exclude = make_data(4, 30, 40)
    first, second = RecallAtK(gallery, ks=KS), RecallAtK(gallery, ks=KS)
    update_in_batches(first, queries[:13], targets[:13], exclude[:13])
    update_in_batches(second, queries[13:], targets[13:], exclude[13:])
    first.merge_state(second)
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    assert as_floats(first.compute()) == pytest.approx(expected, abs=1e-6)


def test_merge_state_from_a_state_dict_gives_recall_of_both_query_sets():
    queries, gallery, targets, exclude = make_data(5, 30, 40)
    first, second = RecallAtK(gallery, ks=KS), RecallAtK(gallery, ks=KS)
    update_in_batches(first, queries[:20], targets[:20], exclude[:20])
    update_in_batches(second, queries[20:], targets[20:], exclude[20:])
    first.merge_state(second.metric_state)
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    assert as_floats(first.compute()) == pytest.approx(expected, abs=1e-6)


def test_merge_state_from_another_gallery_raises():
    queries, gallery, targets, _ = make_data(6, 10, 20)
    mine, other = RecallAtK(gallery), RecallAtK(gallery + 1.0)
    other.update(queries, targets=targets)
    with pytest.raises(ValueError, match=r"incoming_state: expected a RecallAtK ranked against this gallery"):
        mine.merge_state(other)


def test_merge_state_with_another_similarity_raises():
    _, gallery, _, _ = make_data(6, 10, 20)
    with pytest.raises(ValueError, match=r"incoming_state: expected a RecallAtK with similarity 'cosine', got 'dot'"):
        RecallAtK(gallery).merge_state(RecallAtK(gallery, similarity="dot"))


def test_clone_keeps_the_state_and_is_independent():
    queries, gallery, targets, exclude = make_data(8, 24, 30)
    metric = RecallAtK(gallery, ks=KS)
    update_in_batches(metric, queries[:12], targets[:12], exclude[:12])
    copy = metric.clone()
    update_in_batches(copy, queries[12:], targets[12:], exclude[12:])
    first_half = recall_at_k(queries[:12], gallery, targets=targets[:12], exclude=exclude[:12], ks=KS)
    everything = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS)
    assert as_floats(metric.compute()) == pytest.approx(first_half.as_dict(), abs=1e-6)
    assert as_floats(copy.compute()) == pytest.approx(everything.as_dict(), abs=1e-6)


def test_state_dict_holds_no_gallery_and_no_ranks_by_default():
    queries, gallery, targets, exclude = make_data(9, 10, 20)
    metric = RecallAtK(gallery)
    metric.update(queries, targets=targets, exclude=exclude)
    assert dict(metric.state_dict()) == {}


# load_state_dict restores states, not torchmetrics' update count: compute then warns, as
# for any torchmetrics metric.
@pytest.mark.filterwarnings(f"ignore:{COMPUTE_BEFORE_UPDATE}")
def test_persistent_ranks_survive_a_state_dict_round_trip_through_a_file():
    queries, gallery, targets, exclude = make_data(10, 26, 30)
    metric = RecallAtK(gallery, ks=KS)
    metric.persistent(True)
    update_in_batches(metric, queries, targets, exclude)
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    restored = RecallAtK(gallery, ks=KS)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    assert as_floats(restored.compute()) == pytest.approx(expected, abs=1e-6)


def test_metric_declares_torchmetrics_properties():
    metric = RecallAtK(torch.randn(5, 4))
    assert (metric.higher_is_better, metric.is_differentiable, metric.full_state_update) == (True, False, False)
    assert (metric.plot_lower_bound, metric.plot_upper_bound) == (0.0, 1.0)


# ---------------------------------------------------------------- plot


@pytest.fixture
def agg_backend():
    previous = matplotlib.get_backend()
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")
    matplotlib.use(previous, force=True)


def drawn_points(ax: Axes) -> dict[str, list[float]]:
    return {line.get_label(): [float(y) for y in line.get_ydata()] for line in ax.get_lines()}


def test_plot_draws_the_computed_recall_of_each_k_within_bounds(agg_backend):
    queries, gallery, targets, exclude = make_data(11, 30, 40)
    metric = RecallAtK(gallery, ks=KS)
    metric.update(queries, targets=targets, exclude=exclude)
    fig, ax = metric.plot()
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    points = drawn_points(ax)
    assert set(points) == set(expected)
    for name, value in expected.items():
        assert points[name] == pytest.approx([value], abs=1e-6)
    low, high = ax.get_ylim()
    assert low < 0.0 and high > 1.0  # the [0, 1] bounds are drawn inside the axis
    assert ax.get_ylabel() == "RecallAtK"


def test_plot_of_several_results_draws_one_curve_per_k(agg_backend):
    queries, gallery, targets, exclude = make_data(12, 30, 40)
    metric = RecallAtK(gallery, ks=KS)
    steps = [metric(queries[i : i + 10], targets=targets[i : i + 10], exclude=exclude[i : i + 10])
             for i in range(0, 30, 10)]
    fig, ax = metric.plot(steps)
    assert isinstance(fig, Figure)
    points = drawn_points(ax)
    for k in KS:
        assert points[f"recall@{k}"] == pytest.approx([step[f"recall@{k}"].item() for step in steps], abs=1e-6)


def test_plot_on_a_given_axis_draws_there(agg_backend):
    queries, gallery, targets, _ = make_data(13, 10, 20)
    metric = RecallAtK(gallery, ks=(1,))
    metric.update(queries, targets=targets)
    _, given_ax = agg_backend.subplots()
    fig, ax = metric.plot(ax=given_ax)
    assert fig is None and ax is given_ax
    assert drawn_points(ax) == {"recall@1": pytest.approx([metric.compute()["recall@1"].item()], abs=1e-6)}


def _without_matplotlib(tmp_path: Path) -> list[str]:
    """sys.path of this interpreter with matplotlib's files left out of the folders that hold it."""
    hidden = ("matplotlib", "mpl_toolkits", "pylab.py")
    entries = []
    for i, entry in enumerate(p for p in sys.path if p and Path(p).is_dir()):
        folder = Path(entry)
        if not any((folder / name).exists() for name in ("matplotlib", "mpl_toolkits")):
            entries.append(entry)
            continue
        farm = tmp_path / f"path{i}"
        farm.mkdir()
        for item in folder.iterdir():
            if not item.name.startswith(hidden):
                try:
                    (farm / item.name).symlink_to(item)
                except OSError as err:
                    pytest.skip(f"cannot make symbolic links here: {err}")
        entries.append(str(farm))
    return entries


def test_plot_without_matplotlib_raises_torchmetrics_module_not_found_error(tmp_path):
    code = textwrap.dedent(
        """
        import importlib.util
        import torch
        from valfusion.metrics import RecallAtK

        assert importlib.util.find_spec("matplotlib") is None, "matplotlib is still importable"
        metric = RecallAtK(torch.eye(3))
        metric.update(torch.eye(3), targets=[0, 1, 2])
        try:
            metric.plot()
        except ModuleNotFoundError as err:
            print(err)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *_without_matplotlib(tmp_path)])}
    # -S: no site-packages of its own, only the path given (where matplotlib is absent).
    child = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == (
        "Plot function expects `matplotlib` to be installed. Please install with `pip install matplotlib`"
    )


# ---------------------------------------------------------------- real distributed


WORLD_SIZE = 2
NUM_QUERIES, GALLERY_SIZE = 37, 50


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)

    def save(scenario: str, result: dict[str, torch.Tensor]) -> None:
        torch.save(as_floats(result), os.path.join(out_dir, f"{scenario}.rank{rank}.pt"))

    try:
        queries, gallery, targets, exclude = make_data(7, NUM_QUERIES, GALLERY_SIZE)
        metric = RecallAtK(gallery, ks=KS)
        # Uneven shards, several batches each, as a DistributedSampler without padding gives.
        shard = torch.arange(rank, NUM_QUERIES, WORLD_SIZE)
        for batch in shard.split(5):
            metric.update(queries[batch], targets=targets[batch], exclude=exclude[batch])
        save("sharded", metric.compute())
        metric.reset()
        if rank == 0:  # rank 1 never calls update, as a process whose shard is empty
            update_in_batches(metric, queries, targets, exclude)
        save("one_process_without_queries", metric.compute())
        metric.reset()
        save("no_process_with_queries", metric.compute())
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, str | None]:
    """One 2-process gloo run of every scenario (spawning is the slow part); its folder and error."""
    out = tmp_path_factory.mktemp("ddp")
    try:
        mp.spawn(_ddp_worker, args=(str(out / "store"), str(out)), nprocs=WORLD_SIZE, join=True)
    except Exception as err:  # a process that died fails the scenarios it did not finish
        return out, repr(err)
    return out, None


def ddp_results(run: tuple[Path, str | None], scenario: str) -> list[dict[str, float]]:
    out, error = run
    files = [out / f"{scenario}.rank{rank}.pt" for rank in range(WORLD_SIZE)]
    assert all(f.exists() for f in files), f"scenario {scenario!r} did not finish on every process: {error}"
    return [torch.load(f) for f in files]


@pytest.mark.distributed
def test_sharded_queries_under_ddp_give_single_process_recall(ddp_run):
    queries, gallery, targets, exclude = make_data(7, NUM_QUERIES, GALLERY_SIZE)
    single = RecallAtK(gallery, ks=KS)
    single.update(queries, targets=targets, exclude=exclude)
    expected = as_floats(single.compute())
    for result in ddp_results(ddp_run, "sharded"):
        assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.distributed
def test_process_without_queries_under_ddp_still_reports_recall_of_all(ddp_run):
    queries, gallery, targets, exclude = make_data(7, NUM_QUERIES, GALLERY_SIZE)
    expected = recall_at_k(queries, gallery, targets=targets, exclude=exclude, ks=KS).as_dict()
    for result in ddp_results(ddp_run, "one_process_without_queries"):
        assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.distributed
def test_no_process_with_queries_under_ddp_reports_zero_everywhere(ddp_run):
    for result in ddp_results(ddp_run, "no_process_with_queries"):
        assert result == {f"recall@{k}": 0.0 for k in KS}
