"""On this CPU: the fused backend by either GEMM route, the reference, and the raw routes.

1. ``CompositeTransformer(C, 512)`` in training mode (``w_sa = 0.5``), forward + backward
   at VAL's three levels (batch 32), three ways: the fused kernels with their products
   through the BLAS (``Plan.gemm="blas"``, MKL in the x86 wheels), the fused kernels with
   their products as oneDNN 1x1 convolutions (``"onednn"``, token-major), and the
   reference backend. Alternating, best of 2 rounds of ``blocked_autorange`` medians.
2. One ``2048^3`` product's rate: ``torch.mm`` (the BLAS), a 1x1 ``F.conv2d`` on an NCHW
   map of the same FLOPs (oneDNN), the fused kernels' token-major convolution
   (``_kernels.gemm.linear``) and its two gradients (``linear_backward``).
3. What ``cpu_gemm_route()`` (the choice ``"auto"`` makes) measures on this CPU.

One intra-op thread. Run from a source checkout:
``PYTHONPATH=$PWD python benchmarks/scripts/cpu_gemm_paths.py``; it prints Markdown.
"""

from __future__ import annotations

import os
import statistics

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from benchmarks._harness import cpu_description
from valfusion.layers import CompositeTransformer, _kernels, use_backend
from valfusion.layers._kernels import gemm

LEVELS = [(512, 32), (1024, 16), (2048, 8)]
ROUTES = ("fused, BLAS", "fused, oneDNN", "reference")


def _median(stmt: str, min_run_time: float = 1.0, **names: object) -> float:
    return Timer(stmt, globals=names).blocked_autorange(min_run_time=min_run_time).median


def _step(layer: CompositeTransformer, x: torch.Tensor, t: torch.Tensor) -> None:
    layer(x, t).sum().backward()


def _run_route(route: str, layer: CompositeTransformer, x: torch.Tensor, t: torch.Tensor) -> float:
    if route == "reference":
        with use_backend("reference"):
            return _median("step(layer, x, t)", step=_step, layer=layer, x=x, t=t)
    measured = _kernels.cpu_gemm_route
    gemm_route = "blas" if route == "fused, BLAS" else "onednn"
    _kernels.cpu_gemm_route = lambda: gemm_route  # type: ignore[assignment]
    try:
        with use_backend("fused"):
            return _median("step(layer, x, t)", step=_step, layer=layer, x=x, t=t)
    finally:
        _kernels.cpu_gemm_route = measured  # type: ignore[assignment]


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"- torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"CPU: {cpu_description()}, one intra-op thread\n")
    print("| level (batch 32, fwd+bwd) | BLAS time over oneDNN time | reference time over "
          "best fused time | " + " | ".join(f"{r} (ms)" for r in ROUTES) + " |")
    print("| --- | --- | --- | --- | --- | --- |")
    for channels, side in LEVELS:
        layer = CompositeTransformer(channels, 512).train()
        with torch.no_grad():
            layer.w_sa.fill_(0.5)
        x = torch.randn(32, channels, side, side, requires_grad=True)
        t = torch.randn(32, 512, requires_grad=True)
        best: dict[str, float] = {}
        for _ in range(2):
            for route in ROUTES:
                seconds = _run_route(route, layer, x, t)
                best[route] = min(seconds, best.get(route, seconds))
        blas, onednn, reference = (best[r] for r in ROUTES)
        print(f"| {channels} x {side} x {side} | {blas / onednn:.2f} | "
              f"{reference / min(blas, onednn):.2f} | {blas * 1e3:,.0f} | "
              f"{onednn * 1e3:,.0f} | {reference * 1e3:,.0f} |", flush=True)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    maps, kernel = torch.randn(32, n, 8, 8), torch.randn(n, n, 1, 1)
    tokens, weight, grad = torch.randn(32, 64, n), torch.randn(n, n), torch.randn(32, 64, n)
    cases = {
        "`torch.mm` (BLAS)": ("torch.mm(a, b)", 1),
        "`F.conv2d` 1x1, NCHW (32, 2048, 8, 8) (oneDNN)": ("F.conv2d(maps, kernel)", 1),
        "`gemm.linear`: 1x1 conv of token-major (32, 64, 2048)": ("gemm.linear(tokens, weight)", 1),
        "`gemm.linear_backward`: both gradients (2 products)":
            ("gemm.linear_backward(grad, tokens, weight)", 2),
    }
    print(f"\n| one {n}^3 product | time (ms) | GFLOP/s |\n| --- | --- | --- |")
    names = dict(torch=torch, F=F, gemm=gemm, a=a, b=b, maps=maps, kernel=kernel,
                 tokens=tokens, weight=weight, grad=grad)
    for name, (stmt, products) in cases.items():
        seconds = statistics.median(_median(stmt, 2.0, **names) for _ in range(2))
        print(f"| {name} | {seconds * 1e3:,.0f} | {products * 2 * n**3 / seconds / 1e9:.0f} |",
              flush=True)
    os.environ.pop(_kernels.CPU_GEMM_ENV_VAR, None)
    _kernels.cpu_gemm_route.cache_clear()
    print(f"\n`cpu_gemm_route()` (what `\"auto\"` takes on this CPU): `{_kernels.cpu_gemm_route()}`")


if __name__ == "__main__":
    main()
