"""On a GPU: the Triton kernels of the gated residual against the reference, then their speed.

1. Correctness, fp32 and bf16, at VAL's three levels (batch 32; C x H x W = 512 x 32 x 32,
   1024 x 16 x 16, 2048 x 8 x 8; text 512), TF32 off:

   - ``kernel out / grad_r / grad_a / grad_s``: ``triton_gates.gated_product`` and
     ``gated_product_backward`` on token-major ``(B, N, C)`` tensors against the formula in
     fp64 (``out = r a s + bias``, ``grad_r = g a s``, ``grad_a = sum_n g r s``, ``grad_s =
     sum_c g r a``), elementwise within ``eps |truth| + (L + 4) u32 sum |terms|`` (``L``
     terms summed in fp32; ``tests/test_layers_triton.py`` states why);
   - ``composite block``: ``CompositeTransformer`` (training mode, ``w_sa = 0.5``) under the
     fused backend with CUDA's plan and ``elementwise="triton"``, output and every gradient,
     against the reference backend by the rules of ``tests/test_layers_backends.py``: fp32
     within ``16 |ref32 - ref64| + 16 eps32 max(scale, largest gradient)`` of the fp64
     reference; bf16 autocast within ``2 |ref_bf16 - ref32| + 8 u max(scale, largest)`` of
     the fp32 reference (``u = 2^-8``).

2. Speed: forward + backward of ``CompositeTransformer(C, 512)`` in training mode under bf16
   autocast, ``elementwise="triton"`` against ``"torch"`` (same plan otherwise), and the
   reference backend; median of ``torch.utils.benchmark.Timer.blocked_autorange``, best of
   two alternating rounds.

Writes a Markdown file (``--out``) and prints it; exit status 1 if a check fails (or the
Triton kernels cannot run on the device). ``benchmarks/run_gpu.sh`` runs it first, into
``OUT_DIR/kernels.md``. From a source checkout::

    PYTHONPATH=$PWD python benchmarks/scripts/check_cuda_kernels.py --out kernels.md

``--device cpu --tiny`` runs the same on tiny shapes with Triton's interpreter (this script
sets ``TRITON_INTERPRET=1`` on the CPU), as ``tests/test_layers_triton.py`` does. Options
it does not know (``run_gpu.sh`` passes the suite's along) are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (dry run)")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per timing (default 0.2)")
    ns, _ = parser.parse_known_args(argv)
    if ns.device == "cpu" and not ns.tiny:
        parser.error("--device cpu runs Triton's interpreter, which is slow: add --tiny")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.device == "cpu":
        # Before anything imports triton or builds a kernel.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from benchmarks._harness import environment_header, markdown_table

    device = torch.device(ns.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    title = "Triton kernels of the gated residual: correctness and speed"
    text = environment_header(title, device=ns.device)
    sizes = _sizes(ns.tiny)
    unavailable = _triton_unavailable(device)
    checks: list[dict[str, object]] = []
    for shape in sizes.levels:
        for dtype in ("fp32", "bf16"):
            rows = (
                [_row(shape, dtype, name, None) for name in _CHECKS]
                if unavailable else _check_level(shape, dtype, device)
            )
            for row in rows:
                print(" | ".join(str(v) for v in row.values()), flush=True)
            checks += rows
    failed = sum(row["result"] != "PASS" for row in checks)
    text += "## Correctness (TF32 off)\n\n"
    if unavailable:
        text += f"The Triton kernels cannot run here: {unavailable}.\n\n"
    text += markdown_table(["level", "dtype", "check", "max error", "max error / bound",
                            "result"], checks)
    text += f"\n{len(checks) - failed} of {len(checks)} checks passed.\n\n"
    text += "## Speed: forward + backward, bf16 autocast, training mode\n\n"
    if unavailable:
        text += "Not measured: the Triton kernels cannot run here.\n"
    else:
        if device.type == "cpu":
            text += ("On the CPU Triton's interpreter runs the kernels (a dry run): these "
                     "times say nothing about a GPU.\n\n")
        min_run_time = 0.2 if ns.min_run_time is None else ns.min_run_time
        rows = [_time_level(shape, device, min_run_time) for shape in sizes.levels]
        text += markdown_table(["level", "torch / triton", "reference / triton", "triton (ms)",
                                "torch (ms)", "reference (ms)"], rows)
        text += ("\n`triton`, `torch`: the fused backend with CUDA's plan (token-major, one "
                 "transpose each way), the gated residual's elementwise part by the Triton "
                 "kernels or by torch ops; `reference`: the reference backend.\n")
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text)
    print(text)
    print(f"wrote {ns.out}")
    return 1 if failed else 0


_CHECKS = ("kernel out", "kernel grad_r", "kernel grad_a", "kernel grad_s", "composite block")


def _sizes(tiny: bool) -> Any:
    from benchmarks.bench_composite import FULL, TINY

    return TINY if tiny else FULL


def _triton_unavailable(device: Any) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or ``None``."""
    from valfusion.layers._kernels import triton_gates

    if triton_gates.supports(device):
        return None
    return ("triton is not importable, or the GPU is older than compute capability 8.0, or "
            "the CPU runs outside Triton's interpreter")


def _row(shape: Any, dtype: str, check: str,
         errors: tuple[float, float] | None) -> dict[str, object]:
    """A row of the correctness table; ``errors``: (max error, max error / bound), or
    ``None`` for a check that could not run."""
    level = f"{shape.name} ({shape.channels} x {shape.side} x {shape.side}, batch {shape.batch})"
    if errors is None:
        return {"level": level, "dtype": dtype, "check": check, "max error": "-",
                "max error / bound": "-", "result": "FAIL (not run)"}
    error, ratio = errors
    return {"level": level, "dtype": dtype, "check": check, "max error": f"{error:.3g}",
            "max error / bound": f"{ratio:.3g}", "result": "PASS" if ratio <= 1 else "FAIL"}


def _check_level(shape: Any, dtype: str, device: Any) -> list[dict[str, object]]:
    kernels = _kernel_errors(shape, dtype, device)
    rows = [_row(shape, dtype, f"kernel {name}", kernels[name])
            for name in ("out", "grad_r", "grad_a", "grad_s")]
    rows.append(_row(shape, dtype, "composite block", _composite_errors(shape, dtype, device)))
    return rows


def _kernel_errors(shape: Any, dtype: str, device: Any) -> dict[str, tuple[float, float]]:
    """Per result: (max |got - truth|, max |got - truth| / bound)."""
    import torch

    from valfusion.layers._kernels import triton_gates

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    generator = torch.Generator(device=device).manual_seed(0)
    batch, tokens, channels = shape.batch, shape.tokens, shape.channels

    def draw(*size: int) -> Any:
        return torch.randn(*size, generator=generator, device=device).to(torch_dtype)

    r, g = draw(batch, tokens, channels), draw(batch, tokens, channels)
    a, s, bias = draw(batch, channels), draw(batch, tokens), draw(channels)
    out = triton_gates.gated_product(r, a, s, bias, out=torch.empty_like(r))
    grad_r, grad_a, grad_s = triton_gates.gated_product_backward(g, r, a, s, (True, True, True))
    r64, g64, a64, s64, b64 = (t.double() for t in (r, g, a, s, bias))
    ras = r64 * a64[:, None, :] * s64[:, :, None]
    gas = g64 * a64[:, None, :] * s64[:, :, None]
    grs, gra = g64 * r64 * s64[:, :, None], g64 * r64 * a64[:, None, :]
    info, u32 = torch.finfo(torch_dtype), torch.finfo(torch.float32).eps / 2

    def errors(got: Any, truth: Any, scale: Any, terms: int) -> tuple[float, float]:
        error = (got.double() - truth).abs()
        bound = info.eps * truth.abs() + (terms + 4) * u32 * scale + info.tiny * info.eps
        return error.max().item(), (error / bound).max().item()

    return {
        "out": errors(out, ras + b64, ras.abs() + b64.abs(), 1),
        "grad_r": errors(grad_r, gas, gas.abs(), 1),
        "grad_a": errors(grad_a, grs.sum(1), grs.abs().sum(1), tokens),
        "grad_s": errors(grad_s, gra.sum(2), gra.abs().sum(2), channels),
    }


@contextlib.contextmanager
def _elementwise(device_type: str, elementwise: str) -> Iterator[None]:
    """The fused backend with CUDA's plan on ``device_type`` (every dtype), its gated
    residual's elementwise part by ``elementwise`` (``"triton"`` or ``"torch"``)."""
    import dataclasses

    from valfusion.layers import _kernels, use_backend

    chosen = dataclasses.replace(_kernels.DEVICE_PLANS[("cuda", None)], elementwise=elementwise)
    saved = dict(_kernels.DEVICE_PLANS)
    for key in [k for k in _kernels.DEVICE_PLANS if k[0] == device_type] or [(device_type, None)]:
        _kernels.DEVICE_PLANS[key] = chosen
    try:
        with use_backend("fused"):
            yield
    finally:
        _kernels.DEVICE_PLANS.clear()
        _kernels.DEVICE_PLANS.update(saved)


def _composite(shape: Any, device: Any) -> Any:
    import torch

    from benchmarks.bench_composite import NUM_HEADS
    from valfusion.layers import CompositeTransformer

    torch.manual_seed(0)
    block = CompositeTransformer(shape.channels, shape.text, NUM_HEADS).train()
    with torch.no_grad():
        block.w_sa.fill_(0.5)
    return block.to(device)


def _composite_errors(shape: Any, dtype: str, device: Any) -> tuple[float, float]:
    """(max error, max error / bound) over the block's output and every gradient."""
    import copy

    import torch

    from valfusion.layers import _kernels, use_backend

    block = _composite(shape, device)
    generator = torch.Generator(device=device).manual_seed(1)
    size = (shape.batch, shape.channels, shape.side, shape.side)
    image = torch.randn(size, generator=generator, device=device, dtype=torch.float64)
    text = torch.randn(shape.batch, shape.text, generator=generator, device=device,
                       dtype=torch.float64)
    cotangent = torch.randn(size, generator=generator, device=device, dtype=torch.float64)

    def run(precision: torch.dtype, autocast: bool) -> list[Any]:
        module = copy.deepcopy(block).to(precision)
        x = image.to(precision).requires_grad_()
        t = text.to(precision).requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = module(x, t)
        params = list(module.parameters())
        grads = torch.autograd.grad((out.to(cotangent.dtype) * cotangent).sum(), [x, t, *params])
        return [out, *grads]

    with use_backend("reference"):
        ref64 = run(torch.float64, False)
        ref32 = run(torch.float32, False)
        ref16 = run(torch.float32, True) if dtype == "bf16" else None
    with _elementwise(device.type, "triton"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            resolved = _kernels.plan(image.float())
        if resolved is None or resolved.elementwise != "triton":
            raise RuntimeError(f"the fused backend did not plan the Triton kernels: {resolved}")
        got = run(torch.float32, dtype == "bf16")
    largest = max(t.abs().max().item() for t in ref64[1:])
    worst_error = worst_ratio = 0.0
    for i, value in enumerate(got):
        if ref16 is None:  # fp32: against fp64, within 16 x the fp32 reference's own error
            truth = ref64[i]
            scale = max(truth.abs().max().item(), largest)
            bound = (16 * (ref32[i].double() - truth).abs().max().item()
                     + 16 * torch.finfo(torch.float32).eps * scale)
        else:  # bf16 autocast: as close to fp32 as the bf16 reference, with a margin
            truth = ref32[i].double()
            scale = max(truth.abs().max().item(), largest)
            bound = 2 * (ref16[i].double() - truth).abs().max().item() + 8 * 2.0**-8 * scale
        error = (value.double() - truth).abs().max().item()
        worst_error = max(worst_error, error)
        worst_ratio = max(worst_ratio, error / (bound + 1e-300))
    return worst_error, worst_ratio


def _time_level(shape: Any, device: Any, min_run_time: float) -> dict[str, object]:
    """Forward + backward under bf16 autocast: the three variants' medians (ms) and ratios."""
    import torch

    from benchmarks._harness import time_fn
    from valfusion.layers import use_backend

    block = _composite(shape, device)
    generator = torch.Generator(device=device).manual_seed(1)
    size = (shape.batch, shape.channels, shape.side, shape.side)
    image = torch.randn(size, generator=generator, device=device).requires_grad_()
    text = torch.randn(shape.batch, shape.text, generator=generator, device=device)
    cotangent = torch.randn(size, generator=generator, device=device, dtype=torch.bfloat16)

    def step() -> None:
        image.grad = None
        block.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = block(image, text)
        out.backward(cotangent)

    variants: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "triton": lambda: _elementwise(device.type, "triton"),
        "torch": lambda: _elementwise(device.type, "torch"),
        "reference": lambda: use_backend("reference"),
    }
    best: dict[str, float] = {}
    for _ in range(2):  # alternating rounds, best median of each
        for name, context in variants.items():
            with context():
                seconds = time_fn(step, min_run_time=min_run_time)
            best[name] = min(seconds, best.get(name, seconds))
    level = f"{shape.name} ({shape.channels} x {shape.side} x {shape.side}, batch {shape.batch})"
    return {
        "level": level,
        "torch / triton": f"{best['torch'] / best['triton']:.2f}",
        "reference / triton": f"{best['reference'] / best['triton']:.2f}",
        "triton (ms)": f"{best['triton'] * 1e3:.2f}",
        "torch (ms)": f"{best['torch'] * 1e3:.2f}",
        "reference (ms)": f"{best['reference'] * 1e3:.2f}",
    }


if __name__ == "__main__":
    sys.exit(main())
