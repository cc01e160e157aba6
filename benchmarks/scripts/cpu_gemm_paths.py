"""On this CPU: the reference vs the fused backend, and three routes to one GEMM.

1. ``CompositeTransformer(C, 512)`` in training mode (``w_sa = 0.5``), forward + backward
   at VAL's three levels (batch 32), under ``use_backend("fused")`` and
   ``use_backend("reference")``: best of 2 alternating rounds of ``blocked_autorange``.
2. One ``2048^3`` product's rate through ``torch.mm`` (the benchmarks' "GEMM ceiling"), a
   1x1 ``F.conv2d`` of the same FLOPs (oneDNN on x86 CPUs) and ``F.linear``.

One intra-op thread. Run from a source checkout:
``PYTHONPATH=$PWD python benchmarks/scripts/cpu_gemm_paths.py``.
"""

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from valfusion.layers import CompositeTransformer, use_backend


def step(layer: CompositeTransformer, x: torch.Tensor, t: torch.Tensor) -> None:
    layer(x, t).sum().backward()


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("torch", torch.__version__, "threads", torch.get_num_threads())
    for channels, side in [(512, 32), (1024, 16), (2048, 8)]:
        layer = CompositeTransformer(channels, 512).train()
        with torch.no_grad():
            layer.w_sa.fill_(0.5)
        x = torch.randn(32, channels, side, side, requires_grad=True)
        t = torch.randn(32, 512, requires_grad=True)
        best: dict[str, float] = {}
        for _ in range(2):
            for backend in ("fused", "reference"):
                with use_backend(backend):  # type: ignore[arg-type]
                    timer = Timer("step(layer, x, t)", globals={"step": step, "layer": layer, "x": x, "t": t})
                    median = timer.blocked_autorange(min_run_time=1).median
                best[backend] = min(median, best.get(backend, median))
        fused, reference = best["fused"], best["reference"]
        print(
            f"C={channels} {side}x{side}: fused {fused * 1e3:.0f} ms, reference "
            f"{reference * 1e3:.0f} ms, reference/fused {reference / fused:.2f}",
            flush=True,
        )
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(32, n, 8, 8), torch.randn(n, n, 1, 1)  # 32 * 8 * 8 = 2048 rows
    names = {"torch.mm": "torch.mm(a, b)", "F.conv2d 1x1": "F.conv2d(x, w)", "F.linear": "F.linear(a, b)"}
    for name, stmt in names.items():
        timer = Timer(stmt, globals={"torch": torch, "F": F, "a": a, "b": b, "x": x, "w": w})
        median = timer.blocked_autorange(min_run_time=2).median
        print(f"{name} ({n}^3): {median * 1e3:.0f} ms, {2 * n**3 / median / 1e9:.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
