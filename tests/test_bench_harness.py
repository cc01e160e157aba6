"""The benchmark harness: its clocks, ceiling size and results header."""

from __future__ import annotations

import time
import timeit

import torch

from benchmarks._harness import (
    CUDA_GEMM_N,
    BenchArgs,
    ceiling_gemm_size,
    environment_header,
    make_clock,
)


def test_cpu_clock_is_process_time_for_one_thread() -> None:
    clock, name = make_clock(BenchArgs(device="cpu"), threads=1)
    assert clock is time.process_time and "process CPU time" in name


def test_wall_clock_on_cpu_is_the_plain_wall_clock() -> None:
    clock, _ = make_clock(BenchArgs(device="cpu", clock="wall"), threads=1)
    assert clock is timeit.default_timer


def test_cuda_clock_synchronises_before_every_reading(monkeypatch) -> None:
    # No GPU here: record the calls the clock makes instead of running one. A bare wall
    # clock (what torch.utils.benchmark gets when handed timeit.default_timer) would time
    # how fast kernels are queued, not how fast they run.
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append("sync"))
    clock, name = make_clock(BenchArgs(device="cuda"), threads=4)
    first, second = clock(), clock()
    assert calls == ["sync", "sync"]
    assert second >= first and "synchronize" in name


def test_ceiling_gemm_is_larger_on_a_gpu_and_small_when_tiny() -> None:
    assert ceiling_gemm_size(BenchArgs(device="cpu")) == 2048
    assert ceiling_gemm_size(BenchArgs(device="cuda")) == CUDA_GEMM_N == 8192
    assert ceiling_gemm_size(BenchArgs(device="cuda", tiny=True)) == 256


def test_header_shows_python_m_benchmarks_rather_than_the_script_path() -> None:
    header = environment_header("T", argv=["/x/benchmarks/__main__.py", "composite", "--tiny"])
    assert "- command: `python -m benchmarks composite --tiny`" in header
