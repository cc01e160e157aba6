"""Recall@K at gallery scale: ``recall_at_k`` vs its ceiling and the usual ways of computing it.

Compared, on the same embeddings (unit-norm, 512-d; 2,000 queries x 20,000 gallery items;
K = 1, 10, 50; each query's reference image excluded):

- **ceiling**: what any exact method must at least do: per chunk of ``chunk_size`` queries,
  one GEMM ``(C, D) x (D, G)`` and ``torch.topk(K_max)``; nothing else (no exclusion, no
  rank of the target, no tie rule). FLOPs: ``2 Q G D`` for the GEMM.
- **recall_at_k**: valfusion, ``similarity="cosine"`` (the default; it rescales the score
  columns by the gallery norms) and ``"dot"``; on *near* queries (a noisy copy of the
  target, moderate recall: most best targets are in the top-50 list) and on *random*
  queries (worst case: almost no best target is in the list, so every row takes the
  counting passes).
- **RetrievalRecall**: ``torchmetrics.retrieval.RetrievalRecall(top_k=K)`` for each K on the
  flattened ``Q x G`` score matrix (excluded items dropped, scores shifted by +2 because
  torchmetrics only counts relevant items with a positive score).
- **sort loop**: per query, one GEMV, mask the reference, ``argsort`` the whole gallery and
  find the target (the structure of public evaluation scripts).

All four are checked to give the same recalls before anything is timed. Fast paths are timed
with ``torch.utils.benchmark`` (blocked_autorange median) in alternating rounds; the ratio to
the ceiling is taken between the fastest rounds of each (load from other jobs only adds
time), with the median of the per-round ratios shown for the spread. On CPU they are timed
at the configured thread count and again at one thread: on an oversubscribed machine each
multi-threaded op may wait for a descheduled OpenMP peer, a tax on many-op code that the
two-op ceiling hardly pays. The two slow references are timed once (``time.perf_counter``);
RetrievalRecall on a subset of the queries, scaled linearly (its cost is linear in Q: a
per-query sort after one grouping sort; stated in the table).

Memory: a subprocess evaluates a 1,000,000-item gallery (512-d) with two chunk sizes and
reports the peak resident set (``VmHWM``, reset after the inputs are built) above the
inputs, next to the size of one ``chunk_size x G`` float32 score block.

    python -m benchmarks recall [--device cuda] [--tiny]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.retrieval import RetrievalRecall

from valfusion.metrics import recall_at_k
from valfusion.metrics.ranking import (
    best_target,
    chunk_scores,
    prepare_gallery,
    rank_of,
    topk_by_rule,
)

from ._harness import (
    DTYPES,
    BenchArgs,
    environment_header,
    gemm_flops_per_second,
    markdown_table,
    time_fn,
    write_result,
)

KS = (1, 10, 50)
# The tables' columns: the row's name, its comparisons (to the ceiling, to one score
# block), then the figures they come from.
TIMING_COLUMNS = (
    "threads", "queries", "method", "x ceiling (best)", "x ceiling (median)", "roofline",
    "best time (ms)",
)
MEMORY_COLUMNS = (
    "chunk_size", "peak / block", "peak above inputs (MiB)", "score block (MiB)",
    "inputs (MiB)", "time (s)",
)
# Noise added to the target to make a "near" query (|noise| ~ NEAR_NOISE * |target|):
# chosen so that R@1/10/50 (about 0.2 / 0.45 / 0.63) look like a trained composed-retrieval
# model's on FashionIQ or Shoes.
NEAR_NOISE = 7.0


@dataclass(frozen=True)
class Sizes:
    queries: int
    gallery: int
    dim: int
    chunk: int
    torchmetrics_queries: int  # queries RetrievalRecall is timed on (then scaled to `queries`)
    memory_gallery: int
    memory_dim: int
    memory_queries: int
    memory_chunks: tuple[int, ...]


FULL = Sizes(2000, 20_000, 512, 1024, 500, 1_000_000, 512, 512, (64, 256))
TINY = Sizes(48, 600, 32, 16, 48, 20_000, 32, 64, (8,))


@dataclass(frozen=True)
class Problem:
    queries: Tensor  # (Q, D) unit-norm
    gallery: Tensor  # (G, D) unit-norm
    targets: Tensor  # (Q,) gallery index
    exclude: Tensor  # (Q,) gallery index of the "reference", never the target


def make_problem(sizes: Sizes, near: bool, device: str, dtype: torch.dtype, seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(sizes.gallery, sizes.dim, generator=gen), dim=1)
    targets = torch.randint(0, sizes.gallery, (sizes.queries,), generator=gen)
    noise = torch.randn(sizes.queries, sizes.dim, generator=gen) / sizes.dim**0.5
    queries = gallery[targets] + NEAR_NOISE * noise if near else noise
    offset = torch.randint(1, sizes.gallery, (sizes.queries,), generator=gen)
    exclude = (targets + offset) % sizes.gallery
    return Problem(
        F.normalize(queries, dim=1).to(device, dtype),
        gallery.to(device, dtype),
        targets.to(device),
        exclude.to(device),
    )


# ---------------------------------------------------------------- the four ways


def ceiling(problem: Problem, chunk: int) -> None:
    """One GEMM + top-K per chunk of queries: the least an exact Recall@K must do."""
    for start in range(0, problem.queries.shape[0], chunk):
        scores = problem.queries[start : start + chunk] @ problem.gallery.T
        torch.topk(scores, max(KS), dim=1)


def valfusion_recall(problem: Problem, chunk: int, similarity: str) -> dict[int, float]:
    return recall_at_k(
        problem.queries, problem.gallery, targets=problem.targets, exclude=problem.exclude,
        ks=KS, similarity=similarity, chunk_size=chunk,
    ).recall


def torchmetrics_recall(problem: Problem, num_queries: int) -> dict[int, float]:
    """RetrievalRecall(top_k=K) per K on the flattened scores of the first ``num_queries``."""
    queries, targets, exclude = (x[:num_queries] for x in (problem.queries, problem.targets, problem.exclude))
    rows = torch.arange(num_queries, device=queries.device)
    # float64: the +2 shift (torchmetrics ignores non-positive scores) must not create ties.
    scores = (queries @ problem.gallery.T).double() + 2
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[rows, targets] = True
    keep = torch.ones_like(relevant)
    keep[rows, exclude] = False
    query_index = rows[:, None].expand_as(scores)
    preds, target, indexes = scores[keep], relevant[keep], query_index[keep]
    return {k: RetrievalRecall(top_k=k)(preds, target, indexes=indexes).item() for k in KS}


def sort_loop_recall(problem: Problem) -> dict[int, float]:
    """Per query: scores, mask the reference, argsort the whole gallery, find the target."""
    ranks = []
    for query, target, excluded in zip(problem.queries, problem.targets.tolist(), problem.exclude.tolist()):
        scores = (problem.gallery @ query).float()
        scores[excluded] = float("-inf")
        order = torch.argsort(scores, descending=True, stable=True)
        ranks.append(int((order == target).nonzero()[0]))
    return {k: sum(r < k for r in ranks) / len(ranks) for k in KS}


# ---------------------------------------------------------------- memory (subprocess)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from valfusion.metrics import recall_at_k

    gallery_size, dim, num_queries, chunk, device, threads = json.loads(sys.argv[1])
    torch.set_num_threads(threads)

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    gen = torch.Generator(device=device).manual_seed(0)
    # In place: building the inputs leaves no temporary behind to inflate the baseline.
    gallery = torch.empty(gallery_size, dim, device=device).normal_(generator=gen)
    queries = torch.empty(num_queries, dim, device=device).normal_(generator=gen)
    targets = torch.randint(0, gallery_size, (num_queries,), device=device, generator=gen)
    recall_at_k(queries[:2], gallery[:1000], targets=targets[:2] % 1000, chunk_size=chunk)  # lazy init
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        base = status("VmRSS")
    start = time.perf_counter()
    result = recall_at_k(queries, gallery, targets=targets, chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status("VmHWM")
    print(json.dumps({"base": base, "peak": peak, "seconds": time.perf_counter() - start,
                      "inputs": (gallery.numel() + queries.numel()) * 4,
                      "recall": result.recall}))
    """
)


def memory_check(sizes: Sizes, device: str, chunk: int) -> dict[str, float]:
    """Peak memory of one recall_at_k call above its inputs, measured in a fresh process."""
    config = [sizes.memory_gallery, sizes.memory_dim, sizes.memory_queries, chunk,
              torch.device(device).type, torch.get_num_threads()]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, json.dumps(config)],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run


@dataclass
class Timings:
    """Fast-path times (seconds per call, one entry per round) at one thread count."""

    threads: int
    times: dict[str, list[float]]
    gemm_flops: float  # FLOP/s of a 2048^3 fp32 matrix product at this thread count

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def best(self, name: str) -> float:
        return min(self.times[name])

    def ratio(self, name: str, query_set: str) -> float:
        """Median over rounds of time(name) / time(ceiling) on the same queries."""
        ceil = self.times[f"ceiling ({query_set})"]
        return statistics.median(t / c for t, c in zip(self.times[name], ceil))

    def best_ratio(self, name: str, query_set: str) -> float:
        """Fastest round of ``name`` over fastest round of the ceiling on the same queries."""
        return self.best(name) / self.best(f"ceiling ({query_set})")


def _time_fast_paths(problems: dict[str, Problem], chunk: int, rounds: int, min_run_time: float,
                     sync: Callable[[], None]) -> dict[str, list[float]]:
    fns: dict[str, Callable[[], object]] = {}
    for name, problem in problems.items():
        fns[f"ceiling ({name})"] = lambda p=problem: (ceiling(p, chunk), sync())
        for sim in ("cosine", "dot"):
            fns[f"recall_at_k {sim} ({name})"] = lambda p=problem, s=sim: (valfusion_recall(p, chunk, s), sync())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_fn(fn, min_run_time))
    return times


def _breakdown(problem: Problem, chunk: int, min_run_time: float, sync: Callable[[], None]) -> list[tuple[str, float]]:
    """Seconds per chunk of the steps of recall_at_k (cosine), each timed on its own."""
    queries = problem.queries[:chunk]
    targets = problem.targets[:chunk, None]
    cosine = prepare_gallery(problem.gallery, "cosine")
    dot = prepare_gallery(problem.gallery, "dot")
    scores = chunk_scores(queries, cosine)
    score, index, _ = best_target(scores, targets, None)
    steps = {
        "GEMM (dot scores)": lambda: chunk_scores(queries, dot),
        "cosine: GEMM + column rescaling": lambda: chunk_scores(queries, cosine),
        f"torch.topk(K={max(KS)})": lambda: torch.topk(scores, max(KS), dim=1),
        f"topk_by_rule(K={max(KS)}) (topk of K+1, tie check)": lambda: topk_by_rule(scores, max(KS)),
        "rank_of: counting passes over every row": lambda: rank_of(scores, score, index),
    }
    return [(name, time_fn(lambda f=fn: (f(), sync()), min_run_time)) for name, fn in steps.items()]


def _check_same(reference: dict[int, float], other: dict[int, float], what: str, tol: float) -> None:
    if any(abs(reference[k] - other[k]) > tol for k in KS):
        raise AssertionError(f"{what} disagrees with recall_at_k: {other} vs {reference}")


def _first_queries(problem: Problem, num_queries: int) -> Problem:
    return Problem(problem.queries[:num_queries], problem.gallery,
                   problem.targets[:num_queries], problem.exclude[:num_queries])


def run(args: BenchArgs) -> None:
    """Time recall_at_k against the ceiling and the references; check memory; write ``recall.md``."""
    sizes = TINY if args.tiny else FULL
    dtype = DTYPES[args.dtype]
    rounds = 1 if args.tiny else 5
    cuda = torch.device(args.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    load_before = os.getloadavg()[0]
    problems = {name: make_problem(sizes, name == "near", args.device, dtype) for name in ("near", "random")}
    # Same recalls from every method before timing. Scores rounded differently (GEMV vs
    # GEMM, with or without the cosine rescaling) may order a near-tie differently, so
    # up to two queries may move.
    recalls = {}
    tol = 2.5 / sizes.queries
    for name, problem in problems.items():
        recalls[name] = valfusion_recall(problem, sizes.chunk, "cosine")
        _check_same(recalls[name], valfusion_recall(problem, sizes.chunk, "dot"), "similarity='dot'", tol)
    near = problems["near"]
    _check_same(recalls["near"], sort_loop_recall(near), "sort loop", tol)
    _check_same(valfusion_recall(_first_queries(near, sizes.torchmetrics_queries), sizes.chunk, "cosine"),
                torchmetrics_recall(near, sizes.torchmetrics_queries), "RetrievalRecall",
                2.5 / sizes.torchmetrics_queries)

    # Fast paths at the configured thread count and, on CPU, at one thread: on a shared,
    # oversubscribed machine every multi-threaded op can wait for a descheduled OpenMP
    # peer, which taxes many-op code more than the two-op ceiling; one thread shows the
    # work ratio without that noise.
    threads = torch.get_num_threads()
    thread_counts = [threads] if cuda or threads == 1 else [threads, 1]
    timings = []
    for count in thread_counts:
        torch.set_num_threads(count)
        try:
            gemm = gemm_flops_per_second(args.device, torch.float32, min_run_time=args.min_run_time)
            times = _time_fast_paths(problems, sizes.chunk, rounds, args.min_run_time, sync)
            timings.append(Timings(count, times, gemm))
        finally:
            torch.set_num_threads(threads)

    breakdown = _breakdown(problems["random"], sizes.chunk, args.min_run_time, sync)

    # Slow references: timed once each, at the configured thread count.
    start = time.perf_counter()
    torchmetrics_recall(near, sizes.torchmetrics_queries)
    sync()
    tm_seconds = (time.perf_counter() - start) * sizes.queries / sizes.torchmetrics_queries
    start = time.perf_counter()
    sort_loop_recall(near)
    sync()
    loop_seconds = time.perf_counter() - start

    memory = [(chunk, memory_check(sizes, args.device, chunk)) for chunk in sizes.memory_chunks]
    load = (load_before, os.getloadavg()[0])
    text = _report(args, sizes, rounds, recalls, timings, tm_seconds, loop_seconds, memory, load,
                   breakdown)
    write_result("recall.md", text, args)


def _report(args: BenchArgs, sizes: Sizes, rounds: int, recalls: dict[str, dict[int, float]],
            timings: list[Timings], tm_seconds: float, loop_seconds: float,
            memory: list[tuple[int, dict[str, float]]], load: tuple[float, float],
            breakdown: list[tuple[str, float]]) -> str:
    flops = 2 * sizes.queries * sizes.gallery * sizes.dim
    text = environment_header("Recall@K: recall_at_k vs GEMM + top-K, RetrievalRecall, a sort loop",
                              device=args.device)
    text += (
        f"\nQ = {sizes.queries} queries x G = {sizes.gallery} gallery items x D = {sizes.dim}, "
        f"{args.dtype}, K = {KS}, chunk_size = {sizes.chunk}, each query's reference excluded. "
        f"Near queries: R@1/10/50 = {_fmt_recall(recalls['near'])}; random queries: "
        f"{_fmt_recall(recalls['random'])}. All methods agree on the recalls (checked before "
        f"timing). Machine load (1-minute load average) {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end, on {os.cpu_count()} CPUs.\n\n"
        f"Fast paths: {rounds} alternating round(s), each timing every method with the "
        f"blocked_autorange median (min_run_time={args.min_run_time} s). \"best\" = fastest round; "
        "\"x ceiling (best)\" = best time / best ceiling time on the same queries (interference "
        "from other jobs only ever adds time, so the fastest round of each is the closest to its "
        "own cost; the targets are judged on it); \"x ceiling (median)\" = median of the "
        "per-round ratios, for the spread. Roofline = 2QGD / best time / the FLOP/s of a 2048^3 "
        "fp32 matrix product at the same thread count, measured just before ("
        + ", ".join(f"{t.gemm_flops / 1e9:.0f} GFLOP/s at {_threads(t.threads)}" for t in timings)
        + ").\n\n"
    )
    rows = []
    for timing in timings:
        for query_set in ("near", "random"):
            for method in ("ceiling", "recall_at_k cosine", "recall_at_k dot"):
                name = f"{method} ({query_set})"
                label = "ceiling: GEMM + topk" if method == "ceiling" else method
                rows.append((timing.threads, query_set, label,
                             f"{timing.best_ratio(name, query_set):.2f}",
                             f"{timing.ratio(name, query_set):.2f}",
                             f"{flops / timing.best(name) / timing.gemm_flops:.0%}",
                             timing.best(name) * 1e3))
    main = timings[0]
    ceil_near = main.best("ceiling (near)")
    rows.append((main.threads, "near",
                 f"RetrievalRecall, 3 K (timed once on {sizes.torchmetrics_queries} queries, "
                 f"scaled x{sizes.queries / sizes.torchmetrics_queries:g})",
                 f"{tm_seconds / ceil_near:.1f}", "-", "-", tm_seconds * 1e3))
    rows.append((main.threads, "near", "per-query sort loop (timed once, all queries)",
                 f"{loop_seconds / ceil_near:.1f}", "-", "-", loop_seconds * 1e3))
    text += markdown_table(TIMING_COLUMNS, rows)

    ours = main.best("recall_at_k cosine (near)")
    speedup_tm, speedup_loop = tm_seconds / ours, loop_seconds / ours
    targets = []
    for timing in timings:
        near_ratio = timing.best_ratio("recall_at_k cosine (near)", "near")
        worst = max(timing.best_ratio(f"recall_at_k {s} (random)", "random") for s in ("cosine", "dot"))
        targets += [
            (f"within 1.3x of GEMM + topk, default cosine, near queries ({_threads(timing.threads)})",
             f"{near_ratio:.2f}x", _met(near_ratio <= 1.3)),
            (f"within 1.3x of GEMM + topk, worst case: random queries, every row counted "
             f"({_threads(timing.threads)})", f"{worst:.2f}x", _met(worst <= 1.3)),
        ]
    targets += [
        (f">= 50x faster than RetrievalRecall ({_threads(main.threads)})", f"{speedup_tm:.0f}x",
         _met(speedup_tm >= 50)),
        (f"(for reference) faster than the per-query sort loop ({_threads(main.threads)})",
         f"{speedup_loop:.0f}x", "-"),
    ]
    text += "\n## Targets\n\n" + markdown_table(["target", "measured", "met"], targets)

    chunk_rows = min(sizes.chunk, sizes.queries)
    text += (
        f"\n## Where the time goes: one chunk of {chunk_rows} random queries x {sizes.gallery} "
        f"({_threads(torch.get_num_threads())}, each step timed alone)\n\n"
    )
    text += markdown_table(["step", "ms per chunk"], [(name, t * 1e3) for name, t in breakdown])
    text += (
        "\nWhat recall_at_k does beyond the ceiling: the cosine column rescaling (one pass over "
        "the chunk's scores), a top-K of K + 1 with a tie check, and, for each query whose best "
        "target is not in its top-K list, its exact rank under the index tie rule: a "
        "greater-than and an equal-to comparison against the target's score and one sum per "
        "row (no sort). With random queries every row is counted, the worst case; with the "
        "near queries only the rows whose target lies beyond the top 50. Those passes are "
        "memory-bound and PyTorch runs them as separate kernels, so they cost a fixed share "
        "of the GEMM + top-K time; on a shared machine, where each multi-threaded op can also "
        "wait for a descheduled thread, the share grows with the number of ops. Where a "
        "1.3x target above is not met, this is the reason: the measured cost of the counting "
        "passes is in the table.\n"
    )

    text += (
        f"\n## Memory: {sizes.memory_gallery:,} gallery items x {sizes.memory_dim}, "
        f"{sizes.memory_queries} random queries (fresh subprocess)\n\n"
        "Peak resident memory (CPU: VmHWM reset after the inputs were built; CUDA: "
        "max_memory_allocated) above the inputs, against one chunk_size x G float32 score "
        "block.\n\n"
    )
    mem_rows = []
    for chunk, m in memory:
        block = chunk * sizes.memory_gallery * 4
        extra = m["peak"] - m["base"]
        mem_rows.append((chunk, f"{extra / block:.2f}", f"{extra / 2**20:,.0f}",
                         f"{block / 2**20:,.0f}", f"{m['inputs'] / 2**20:,.0f}",
                         f"{m['seconds']:.1f}"))
    text += markdown_table(MEMORY_COLUMNS, mem_rows)
    text += (
        "\nWorking memory follows the chunk size, not the number of queries: one score block, "
        "the counting passes' two masks of about 1 MiB each, or of one gallery row each when a "
        "row is larger (and, when fewer than half of a chunk's rows need counting, one gathered "
        "block of those rows, of the same size), plus "
        "top-K workspace and allocator slack. No `Q x G` matrix and no `G x D` copy of the "
        "gallery is made.\n"
    )
    return text


def _fmt_recall(recall: dict[int, float]) -> str:
    return " / ".join(f"{recall[k]:.3f}" for k in KS)


def _threads(count: int) -> str:
    return f"{count} thread" if count == 1 else f"{count} threads"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"
