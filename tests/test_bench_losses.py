"""Smoke test: the losses benchmark runs end to end at tiny sizes (no timing asserted)."""

from __future__ import annotations

from benchmarks._harness import BenchArgs
from benchmarks.bench_losses import run


def test_losses_benchmark_runs_at_tiny_sizes_and_prints_a_table(capsys):
    run(BenchArgs(tiny=True, write=False, min_run_time=0.01))
    out = capsys.readouterr().out
    assert "| softmax | 8 | 512 |" in out
    assert "| triplet (semi-hard) | 16 | 512 |" in out
