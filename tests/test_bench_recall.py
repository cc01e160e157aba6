"""Smoke test: the Recall@K benchmark runs end to end at tiny sizes (no timing asserted)."""

from __future__ import annotations

from benchmarks._harness import BenchArgs
from benchmarks.bench_recall import run


def test_recall_benchmark_runs_at_tiny_sizes_and_prints_its_tables(capsys):
    run(BenchArgs(tiny=True, write=False, min_run_time=0.01))
    out = capsys.readouterr().out
    assert "| random | recall_at_k cosine |" in out
    assert "| >= 50x faster than RetrievalRecall" in out
    assert "| chunk_size | peak / block | peak above inputs (MiB) |" in out
