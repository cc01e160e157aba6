"""The benchmark harness: its clocks, ceiling size and results header."""

from __future__ import annotations

import os
import time
import timeit

import pytest
import torch

from benchmarks._harness import (
    CUDA_GEMM_N,
    NO_FAULT_MALLOC_ENV,
    BenchArgs,
    allow_tf32,
    ceiling_gemm_size,
    ceiling_products,
    environment_header,
    make_clock,
    precision_flags,
    run_timed_child,
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


_FRESH_TENSOR_FACTORY = """
import torch

def fresh_tensor_step(mib):
    def step():
        torch.empty(mib * 2**18).fill_(1.0)  # mib MiB of float32, written once
    return step
"""


def test_timed_child_applies_its_own_malloc_settings(tmp_path, monkeypatch) -> None:
    # A 64 MiB tensor per step is above glibc's largest dynamic mmap threshold (32 MiB), so
    # under the defaults every step maps and zero-fills it afresh; with the no-fault
    # settings the second step reuses the heap pages of the first. The parent's own
    # MALLOC_* variables must not leak into the child.
    (tmp_path / "fresh_factory.py").write_text(_FRESH_TENSOR_FACTORY)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2**32))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", str(2**34))
    mib = 64
    kwargs = dict(workloads=[{"mib": mib}], min_run_time=0.01, gemm_n=64)
    (default,) = run_timed_child("fresh_factory:fresh_tensor_step", malloc_env=None, **kwargs)
    (tuned,) = run_timed_child("fresh_factory:fresh_tensor_step", malloc_env=NO_FAULT_MALLOC_ENV,
                               **kwargs)
    assert default["faulted_bytes"] >= 0.9 * mib * 2**20
    assert tuned["faulted_bytes"] < 4 * 2**20
    for row in (default, tuned):
        assert row["seconds"] > 0 and row["gemm_flops"] > 0


def test_header_shows_python_m_valfusion_benchmarks_when_installed() -> None:
    argv = ["/venv/lib/site-packages/valfusion/benchmarks/__main__.py", "losses", "--tiny"]
    assert "- command: `python -m valfusion.benchmarks losses --tiny`" in environment_header(
        "T", argv=argv)


def test_header_names_the_cpu_its_cores_and_the_versions() -> None:
    header = environment_header("T", argv=["x"])
    cpu_line = next(line for line in header.splitlines() if line.startswith("- CPU: "))
    assert f"{os.cpu_count()} logical CPUs" in cpu_line
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), None)
    except OSError:
        model = None
    if model is not None:
        assert cpu_line.startswith(f"- CPU: {model}, ")
    assert f"torch {torch.__version__}" in header
    assert f"`{torch.get_float32_matmul_precision()}`" in header


@pytest.fixture
def restore_tf32():
    # Process-wide flags (torch's backend modules resolve them dynamically, which
    # monkeypatch cannot undo): put back what they were.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_precision_flags_record_tf32_for_matmuls_and_convolutions(restore_tf32) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    default = precision_flags()
    assert "matrix products: False" in default and "convolutions: True" in default
    assert "unequal" in default
    allow_tf32(True)
    both = precision_flags()
    assert "matrix products: True" in both and "convolutions: True" in both
    assert "unequal" not in both


def test_ceiling_products_are_the_same_product_by_two_routes() -> None:
    """Each route computes ``n x n x n`` multiply-adds: the matrix product's output is
    ``(n, n)``, the 1x1 convolution's ``(n / 64, n, 8, 8)``, i.e. ``n`` rows of ``n`` outputs,
    each a sum over ``n`` inputs (its weight's second dimension)."""
    routes = ceiling_products(128)
    assert set(routes) == {"torch.mm", "1x1 conv"}
    product = routes["torch.mm"]()
    conv = routes["1x1 conv"]()
    assert isinstance(product, torch.Tensor) and isinstance(conv, torch.Tensor)
    assert product.shape == (128, 128)
    assert conv.shape == (2, 128, 8, 8)
    with pytest.raises(ValueError, match="n: expected a multiple of 64, got 100"):
        ceiling_products(100)


def test_the_ceiling_is_the_faster_route(monkeypatch) -> None:
    """``gemm_flops_per_second`` takes the best rate of the two routes: a route made slow by
    a sleep does not lower it."""
    import benchmarks._harness as harness

    real = harness.ceiling_products

    def one_slow(n, device="cpu", dtype=torch.float32):
        routes = real(n, device, dtype)
        mm = routes["torch.mm"]
        routes["torch.mm"] = lambda: (time.sleep(0.05), mm())
        return routes

    monkeypatch.setattr(harness, "ceiling_products", one_slow)
    rate = harness.gemm_flops_per_second(n=64, min_run_time=0.01)
    # The slow route cannot reach 2 * 64^3 / 0.05 s; the best one must beat it.
    assert rate > 2 * 64**3 / 0.05
