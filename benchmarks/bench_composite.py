"""VAL's composite transformer: valfusion vs the two reference structures, against the ceiling.

Measured (``python -m benchmarks composite [--device cuda] [--dtype bf16] [--tiny]``):

- **levels** (``composite.md``): the block at VAL's three levels (batch 32, text 512;
  512 ch at 32x32, 1024 at 16x16, 2048 at 8x8), forward (inference: ``eval()``,
  ``no_grad``) and forward + backward (training: ``train()``, batch-norm batch statistics,
  ``backward`` of a fixed random output gradient), and their sum over the three levels;
  plus the high-resolution case (512 ch at 64x64, ``N = 4096``, batch 8) with the peak
  memory of forward + backward.
- **parts** (``composite_parts.md``): the self-attentional transformation and the
  joint-attentional preservation alone, forward + backward, at the three levels.
- **sweep** (``composite_sweep.md``, ``composite_sweep.png``): forward + backward time and
  peak memory against ``N`` (512 ch, batch 8, maps 8x8 ... 64x64).
- **limits** (``composite_limits.md``, CPU): what keeps valfusion's forward + backward
  below the ceiling at each level: the share of its CPU time spent in the kernel (page
  faults: glibc serves each allocation over 32 MiB with a fresh ``mmap`` and returns it
  on free, so every large temporary is zero-filled by the kernel again on every step),
  the fraction of the ceiling that the fused attention kernel reaches on its own at the
  level's shapes and its share of the step, and the cost of the NCHW <-> token-major
  transposes where the layer makes them (maps under ``PER_SAMPLE_MIN_TOKENS`` positions);
  then the same step in subprocesses under glibc's defaults and under
  ``_harness.NO_FAULT_MALLOC_ENV`` (no fresh pages per step), side by side.

Implementations, all computing the same function from the same weights (checked before
timing; ``tests/test_references.py`` checks it too):

- **valfusion**: :class:`valfusion.layers.CompositeTransformer` in its default (paper)
  configuration: grouped heads (2), 7x7 spatial gate, ``F_c`` = 1x1 conv + BN + ReLU.
- **ref 1, official graph**: :class:`benchmarks.references.OfficialGraphComposite`.
- **ref 2, MHA port**: :class:`benchmarks.references.MultiheadAttentionPortComposite`.

FLOPs (useful work of the chosen head layout, per sample, forward; a multiply-add is 2):

    F = 2 N C^2          fusion 1x1 conv F_c, image part
      + 2 D C            fusion, text part (once per sample: W_t t, then broadcast)
      + 6 N C^2 / G      q, k, v maps (G = num_heads for grouped heads, 1 for full)
      + 4 N^2 C          Q K^T and A V over all heads (2 N^2 d each, d = C / num_heads)
      + 2 N C^2          output projection F_proj
      + 2 C^2 + 2 N k^2  gates: channel 1x1 conv on the pooled vector, k x k spatial conv

``N = H W``, ``C`` channels, ``D`` text width, ``k = 7``. Forward + backward counts
``3 F`` (backward = 2 x forward). Softmax, normalisation and elementwise work are not
counted. The same count is used for all three implementations, so the references' extra
work (the tiled text through the fusion conv, full instead of grouped q/k/v maps) shows as
a lower fraction of the ceiling. Parts: self-attention ``6 N C^2 / G + 4 N^2 C + 2 N C^2``;
preservation ``2 C^2 + 2 N k^2`` (memory-bound: no fraction is given).

Method: the GEMM ceiling (a ``2048^3`` fp32/bf16 product as ``torch.mm`` and as a 1x1
convolution, ``_harness.ceiling_products``: the faster route counts) is timed in every round next
to the implementations; the implementations and the ceiling are timed alternately
(``torch.utils.benchmark`` ``blocked_autorange`` median per round, the order rotating
between rounds), and the tables give the median over rounds of each time, of each ratio
(reference / valfusion) and of each fraction of the ceiling (achieved FLOP/s over the
ceiling, the best GEMM rate of the case's rounds). On CPU the default is one intra-op thread and process CPU
time (see ``_harness.make_clock``): the machine these files were made on is shared with
other jobs, and CPU time does not count the time the benchmark was descheduled.

Peak memory of forward + backward: on CPU, ``VmHWM - VmRSS`` of a fresh subprocess around
one step, after a warm-up step (``_harness.run_peak_rss_child``): what the step allocates
above the inputs and weights, gradients included; on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the step.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from valfusion.layers import CompositeTransformer
from valfusion.layers._kernels import PER_SAMPLE_MIN_TOKENS

from ._harness import (
    DTYPES,
    NO_FAULT_MALLOC_ENV,
    BenchArgs,
    allocator_note,
    ceiling_gemm_size,
    ceiling_products,
    cuda_peak_memory,
    environment_header,
    interleaved_rounds,
    make_clock,
    markdown_table,
    median_ratio,
    num_threads,
    resolve_threads,
    run_peak_rss_child,
    run_timed_child,
    selected_sections,
    write_result,
)
from .references import (
    MultiheadAttentionPortComposite,
    MultiheadAttentionPortSelfAttention,
    OfficialGraphComposite,
    OfficialGraphPreservation,
    OfficialGraphSelfAttention,
)

OURS, REF1, REF2 = "valfusion", "ref 1 (official graph)", "ref 2 (MHA port)"
IMPLS = (OURS, REF1, REF2)
CEILING = "GEMM ceiling"
SECTIONS = ("levels", "parts", "sweep", "limits")

# The tables' columns: the row's name, the comparisons (ratios to the references, fractions
# of the ceiling), then the figures they come from and the shapes.
_COMPARISONS = ("ref 1 / ours", "ref 2 / ours", "ours % ceil", "ref 1 % ceil", "ref 2 % ceil")
_TIMES = tuple(f"{impl} (ms)" for impl in IMPLS)
LEVEL_COLUMNS = (
    "mode", "level", *_COMPARISONS, *_TIMES, "GFLOP", "ceiling (GFLOP/s)", "C x H x W", "B",
)
HIGH_RES_COLUMNS = ("mode", "case", *LEVEL_COLUMNS[2:])
MEMORY_COLUMNS = ("implementation", "/ ref 1", "peak (MiB)")
PART_COLUMNS = ("part", "level", *_COMPARISONS, *_TIMES, "C x H x W", "B")
SWEEP_COLUMNS = (
    "N", "map", "ours / ref 1 memory", "ours % ceil", *_TIMES,
    *(f"{impl} peak (MiB)" for impl in IMPLS),
)
LIMIT_COLUMNS = (
    "level", "bound from the two kernels, % ceil", "attention kernel alone, % ceil",
    "projection GEMM alone, % ceil", "attention share of step",
    "NCHW <-> token transposes, share", "kernel (sys) share", "fresh pages per step (MiB)",
    "valfusion fwd+bwd (ms)", "C x H x W", "B",
)
ALLOCATOR_COLUMNS = (
    "level", "speed-up (best / best)", "speed-up per round, median [min, max]",
    "defaults, % ceil (best)", "no fresh pages, % ceil (best)", "glibc defaults, best (ms)",
    "no fresh pages, best (ms)", "fresh pages per step, defaults (MiB)",
    "fresh pages per step, no fresh pages (MiB)", "C x H x W", "B",
)
SPATIAL_KERNEL = 7
NUM_HEADS = 2


@dataclass(frozen=True)
class Shape:
    """One benchmark case: ``batch`` maps of ``channels x side x side`` and text width ``text``."""

    name: str
    channels: int
    side: int
    batch: int
    text: int

    @property
    def tokens(self) -> int:
        """``N = H W``."""
        return self.side * self.side


@dataclass(frozen=True)
class Sizes:
    levels: tuple[Shape, ...]
    high_res: Shape
    sweep: tuple[Shape, ...]
    rounds: int
    gemm_n: int


FULL = Sizes(
    levels=(
        Shape("low", 512, 32, 32, 512),
        Shape("mid", 1024, 16, 32, 512),
        Shape("high", 2048, 8, 32, 512),
    ),
    high_res=Shape("high-res", 512, 64, 8, 512),
    sweep=tuple(Shape(f"N={s * s}", 512, s, 8, 512) for s in (8, 16, 24, 32, 48, 64)),
    rounds=3,
    gemm_n=2048,
)
TINY = Sizes(
    levels=(Shape("low", 16, 8, 2, 8), Shape("mid", 32, 4, 2, 8), Shape("high", 64, 2, 2, 8)),
    high_res=Shape("high-res", 16, 12, 2, 8),
    sweep=tuple(Shape(f"N={s * s}", 16, s, 2, 8) for s in (4, 8, 12)),
    rounds=1,
    gemm_n=256,
)


# ---------------------------------------------------------------- FLOP counts


def self_attention_flops(channels: int, tokens: int, groups: int = NUM_HEADS) -> float:
    """Forward FLOPs per sample of the self-attention part: q/k/v, ``QK^T``, ``AV``, proj."""
    c, n = channels, tokens
    return 6 * n * c * c / groups + 4 * n * n * c + 2 * n * c * c


def preservation_flops(channels: int, tokens: int, kernel: int = SPATIAL_KERNEL) -> float:
    """Forward FLOPs per sample of the gates: channel 1x1 conv, ``k x k`` spatial conv."""
    return 2 * channels * channels + 2 * tokens * kernel * kernel


def composite_flops(channels: int, tokens: int, text: int, groups: int = NUM_HEADS) -> float:
    """Forward FLOPs per sample of the composite transformer (formula in the module docstring)."""
    fusion = 2 * tokens * channels * channels + 2 * text * channels
    return (
        fusion
        + self_attention_flops(channels, tokens, groups)
        + preservation_flops(channels, tokens)
    )


# ---------------------------------------------------------------- workloads


def _autocast(device: str, dtype: str) -> contextlib.AbstractContextManager[object]:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


def build_composites(shape: Shape, device: str) -> dict[str, nn.Module]:
    """valfusion's block (seeded) and the two references built from its weights."""
    torch.manual_seed(0)
    layer = CompositeTransformer(shape.channels, shape.text, NUM_HEADS)
    with torch.no_grad():
        layer.w_sa.fill_(0.5)  # both branches reach the output (and the check below)
    modules = {
        OURS: layer,
        REF1: OfficialGraphComposite.from_layer(layer),
        REF2: MultiheadAttentionPortComposite.from_layer(layer),
    }
    return {name: m.to(device) for name, m in modules.items()}


def build_parts(shape: Shape, device: str) -> dict[str, dict[str, nn.Module]]:
    """``{"self-attention": {...}, "preservation": {...}}``, each ours and its references."""
    layer = build_composites(shape, "cpu")[OURS]
    parts = {
        "self-attention": {
            OURS: layer.self_attention,
            REF1: OfficialGraphSelfAttention(layer.self_attention),
            REF2: MultiheadAttentionPortSelfAttention(layer.self_attention),
        },
        "preservation": {
            OURS: layer.preservation,
            REF1: OfficialGraphPreservation(layer.preservation),
        },
    }
    return {k: {n: m.to(device) for n, m in v.items()} for k, v in parts.items()}


def _inputs(shape: Shape, device: str, count: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    maps = [
        torch.randn(shape.batch, shape.channels, shape.side, shape.side, generator=generator)
        for _ in range(count)
    ]
    return [m.to(device).requires_grad_() for m in maps]


def _text(shape: Shape, device: str) -> Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(shape.batch, shape.text, generator=generator).to(device).requires_grad_()


def _grad_like(shape: Shape, device: str) -> Tensor:
    generator = torch.Generator().manual_seed(3)
    size = (shape.batch, shape.channels, shape.side, shape.side)
    return torch.randn(size, generator=generator).to(device)


def _training_step(
    module: nn.Module, call: Callable[[], Tensor], grad: Tensor, inputs: list[Tensor], ctx: Callable
) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        with ctx():
            out = call()
        out.backward(grad.to(out.dtype))

    return step


def _inference_step(call: Callable[[], Tensor], ctx: Callable) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), ctx():
            call()

    return step


def composite_steps(
    shape: Shape, device: str, dtype: str, training: bool
) -> tuple[dict[str, Callable[[], None]], dict[str, nn.Module]]:
    """One zero-argument step per implementation (inputs, modules and gradient bound)."""
    modules = build_composites(shape, device)
    (image,) = _inputs(shape, device, 1)
    text, grad = _text(shape, device), _grad_like(shape, device)

    def ctx() -> contextlib.AbstractContextManager[object]:
        return _autocast(device, dtype)

    steps = {}
    for name, module in modules.items():
        module.train(training)

        def call(m: nn.Module = module) -> Tensor:
            return m(image, text)

        steps[name] = (
            _training_step(module, call, grad, [image, text], ctx)
            if training
            else _inference_step(call, ctx)
        )
    return steps, modules


def part_steps(shape: Shape, device: str, dtype: str) -> dict[str, dict[str, Callable[[], None]]]:
    """Forward + backward steps of each part, per implementation."""
    parts = build_parts(shape, device)
    fused, reference = _inputs(shape, device, 2)
    grad = _grad_like(shape, device)

    def ctx() -> contextlib.AbstractContextManager[object]:
        return _autocast(device, dtype)

    out: dict[str, dict[str, Callable[[], None]]] = {}
    for part, modules in parts.items():
        out[part] = {}
        for name, module in modules.items():
            module.train()
            if part == "self-attention":

                def call(m: nn.Module = module) -> Tensor:
                    return m(fused)

                inputs = [fused]
            else:

                def call(m: nn.Module = module) -> Tensor:
                    return m(fused, reference)

                inputs = [fused, reference]
            out[part][name] = _training_step(module, call, grad, inputs, ctx)
    return out


def memory_workload(
    impl: str, channels: int, side: int, batch: int, text: int, device: str = "cpu",
    dtype: str = "fp32",
) -> Callable[[], None]:
    """Factory for the memory subprocess: one forward + backward step of ``impl``."""
    shape = Shape("memory", channels, side, batch, text)
    steps, _ = composite_steps(shape, device, dtype, training=True)
    return steps[impl]


def _check_same_function(shape: Shape, device: str, dtype: str) -> None:
    """The three implementations agree (training mode: batch statistics) before timing."""
    modules = build_composites(shape, device)
    (image,) = _inputs(shape, device, 1)
    text = _text(shape, device)
    tol = {"fp32": 2e-3}.get(dtype, 0.15)
    if dtype == "fp32" and torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        tol = 2e-2  # cuDNN runs fp32 convolutions in TF32 by default (10-bit mantissa)
    with torch.no_grad(), _autocast(device, dtype):
        outputs = {name: m.train()(image, text).float() for name, m in modules.items()}
    for name in (REF1, REF2):
        torch.testing.assert_close(outputs[name], outputs[OURS], rtol=tol, atol=tol)


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    """Per-round seconds of each implementation and of the GEMM ceiling (FLOP/s)."""

    seconds: dict[str, list[float]]
    ceiling: list[float]  # FLOP/s per round (the best GEMM sample of the case's rounds)
    flops: float  # useful FLOPs of one call

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, base: str = OURS) -> float:
        return median_ratio(self.seconds[name], self.seconds[base])

    def fractions(self, name: str) -> list[float]:
        """Achieved FLOP/s over the ceiling, per round."""
        return [self.flops / t / c for t, c in zip(self.seconds[name], self.ceiling, strict=True)]

    def fraction(self, name: str) -> float:
        return statistics.median(self.fractions(name))


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median [min, max]`` of per-round values (just the value for one round)."""
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


class Runner:
    """Times step dictionaries against the GEMM ceiling with the run's clock and rounds."""

    def __init__(self, args: BenchArgs, sizes: Sizes, threads: int) -> None:
        self.args = args
        self.sizes = sizes
        self.clock, self.clock_name = make_clock(args, threads)
        n = ceiling_gemm_size(args, sizes.gemm_n, sizes.gemm_n)
        self.gemm_n = n
        self._ceiling = {
            f"{CEILING} ({route})": fn
            for route, fn in ceiling_products(n, args.device, DTYPES[args.dtype]).items()
        }
        self._gemm_flops = 2.0 * n**3

    def time(self, steps: dict[str, Callable[[], None]], flops: float,
             rounds: int | None = None) -> Timing:
        fns = {**self._ceiling, **steps}
        seconds = interleaved_rounds(
            fns, rounds or self.sizes.rounds, self.args.min_run_time, timer=self.clock
        )
        # The ceiling is the best the machine did in these rounds, by either route: a GEMM
        # sample that a burst of load from other jobs slowed down must not inflate the
        # fractions, nor a slow BLAS on this CPU (see ceiling_products).
        best = max(self._gemm_flops / t for name in self._ceiling for t in seconds.pop(name))
        return Timing(seconds, [best] * len(seconds[next(iter(seconds))]), flops)


def _share(part: float, whole: float) -> str:
    """``part / whole`` to two decimals, or ``n/a`` when ``whole`` is zero (tiny sizes)."""
    return f"{part / whole:.2f}" if whole > 0 else "n/a"


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


# ---------------------------------------------------------------- the three tables


def _levels_section(runner: Runner, args: BenchArgs, sizes: Sizes) -> tuple[str, dict]:
    rows, timings = [], {}
    for training in (True, False):
        mode = "fwd+bwd" if training else "fwd"
        for shape in sizes.levels:
            flops = composite_flops(shape.channels, shape.tokens, shape.text) * shape.batch
            flops *= 3 if training else 1
            steps, _ = composite_steps(shape, args.device, args.dtype, training)
            timing = runner.time(steps, flops)
            timings[(mode, shape.name)] = timing
            print(f"[composite] {mode} {shape.name}: " + ", ".join(
                f"{n} {_ms(timing.median(n)):.0f} ms" for n in IMPLS))
            rows.append(_level_row(mode, shape, timing))
        total = {n: sum(timings[(mode, s.name)].median(n) for s in sizes.levels) for n in IMPLS}
        ratios = {n: _sum_ratios(timings, mode, sizes, n) for n in (REF1, REF2)}
        rows.append({
            "mode": mode, "level": "sum of 3 levels",
            "ref 1 / ours": _spread(ratios[REF1]), "ref 2 / ours": _spread(ratios[REF2]),
            **{f"{impl} (ms)": f"{_ms(total[impl]):,.0f}" for impl in IMPLS},
        })
    return markdown_table(LEVEL_COLUMNS, rows), timings


def _sum_ratios(timings: dict, mode: str, sizes: Sizes, ref: str) -> list[float]:
    """Per round: the reference's time summed over the levels over valfusion's."""
    rounds = len(timings[(mode, sizes.levels[0].name)].seconds[OURS])
    return [
        sum(timings[(mode, s.name)].seconds[ref][r] for s in sizes.levels)
        / sum(timings[(mode, s.name)].seconds[OURS][r] for s in sizes.levels)
        for r in range(rounds)
    ]


def _level_row(mode: str, shape: Shape, timing: Timing, name: str = "level") -> dict:
    """A row of the levels (``name="level"``) or high-resolution (``"case"``) table."""
    return {
        "mode": mode, name: shape.name,
        "ref 1 / ours": f"{timing.ratio(REF1):.2f}", "ref 2 / ours": f"{timing.ratio(REF2):.2f}",
        "ours % ceil": _pct(timing.fraction(OURS)), "ref 1 % ceil": _pct(timing.fraction(REF1)),
        "ref 2 % ceil": _pct(timing.fraction(REF2)),
        **{f"{impl} (ms)": _ms(timing.median(impl)) for impl in IMPLS},
        "GFLOP": timing.flops / 1e9, "ceiling (GFLOP/s)": statistics.median(timing.ceiling) / 1e9,
        "C x H x W": _shape(shape), "B": shape.batch,
    }


def _shape(shape: Shape) -> str:
    return f"{shape.channels} x {shape.side} x {shape.side}"


MemoryKey = tuple[str, int, int, int]


def _key(impl: str, shape: Shape) -> MemoryKey:
    return impl, shape.channels, shape.side, shape.batch


def _peak_memory(shapes: list[Shape], args: BenchArgs, threads: int) -> dict[MemoryKey, int]:
    """Peak memory of forward + backward of every implementation at every shape."""
    keys = [_key(impl, s) for s in shapes for impl in IMPLS]
    workloads = [
        dict(impl=impl, channels=s.channels, side=s.side, batch=s.batch, text=s.text,
             device=args.device, dtype=args.dtype)
        for s in shapes for impl in IMPLS
    ]
    if torch.device(args.device).type == "cuda":
        peaks = []
        for w in workloads:
            step = memory_workload(**w)
            step()
            peaks.append(cuda_peak_memory(step, args.device))
    else:
        peaks = run_peak_rss_child(f"{__name__}:memory_workload", workloads,
                                   threads)
    return dict(zip(keys, peaks, strict=True))


def _high_res_section(runner: Runner, args: BenchArgs, sizes: Sizes,
                      memory: dict[MemoryKey, int]) -> tuple[str, dict]:
    shape = sizes.high_res
    rows, out = [], {}
    for training in (True, False):
        mode = "fwd+bwd" if training else "fwd"
        flops = composite_flops(shape.channels, shape.tokens, shape.text) * shape.batch
        flops *= 3 if training else 1
        steps, _ = composite_steps(shape, args.device, args.dtype, training)
        timing = runner.time(steps, flops)
        out[mode] = timing
        print(f"[composite] high-res {mode}: " + ", ".join(
            f"{n} {_ms(timing.median(n)):.0f} ms" for n in IMPLS))
        rows.append(_level_row(mode, shape, timing, name="case"))
    table = markdown_table(HIGH_RES_COLUMNS, rows)
    mem_rows = [
        {"implementation": impl,
         "/ ref 1": _share(memory[_key(impl, shape)], memory[_key(REF1, shape)]),
         "peak (MiB)": f"{memory[_key(impl, shape)] / 2**20:,.0f}"}
        for impl in IMPLS
    ]
    table += "\nPeak memory of one forward + backward at N = " f"{shape.tokens}:\n\n"
    table += markdown_table(MEMORY_COLUMNS, mem_rows)
    return table, out


def _parts_text(runner: Runner, args: BenchArgs, sizes: Sizes) -> str:
    rows = []
    for shape in sizes.levels:
        steps = part_steps(shape, args.device, args.dtype)
        for part, impl_steps in steps.items():
            if part == "self-attention":
                flops = self_attention_flops(shape.channels, shape.tokens)
            else:
                flops = preservation_flops(shape.channels, shape.tokens)
            timing = runner.time(impl_steps, 3 * flops * shape.batch)
            has_ref2 = REF2 in impl_steps
            print(f"[composite] part {part} {shape.name}: " + ", ".join(
                f"{n} {_ms(timing.median(n)):.1f} ms" for n in impl_steps))
            memory_bound = part == "preservation"
            rows.append({
                "part": part, "level": shape.name,
                "ref 1 / ours": f"{timing.ratio(REF1):.2f}",
                "ref 2 / ours": f"{timing.ratio(REF2):.2f}" if has_ref2 else "n/a",
                "ours % ceil": "n/a" if memory_bound else _pct(timing.fraction(OURS)),
                "ref 1 % ceil": "n/a" if memory_bound else _pct(timing.fraction(REF1)),
                "ref 2 % ceil": (
                    _pct(timing.fraction(REF2)) if has_ref2 and not memory_bound else "n/a"
                ),
                f"{OURS} (ms)": _ms(timing.median(OURS)),
                f"{REF1} (ms)": _ms(timing.median(REF1)),
                f"{REF2} (ms)": _ms(timing.median(REF2)) if has_ref2 else "n/a",
                "C x H x W": _shape(shape), "B": shape.batch,
            })
    return markdown_table(PART_COLUMNS, rows)


def _sweep_text(runner: Runner, args: BenchArgs, sizes: Sizes,
                memory: dict[MemoryKey, int]) -> tuple[str, dict[str, list[tuple]]]:
    rows, series = [], {impl: [] for impl in IMPLS}
    for shape in sizes.sweep:
        flops = 3 * composite_flops(shape.channels, shape.tokens, shape.text) * shape.batch
        steps, _ = composite_steps(shape, args.device, args.dtype, training=True)
        timing = runner.time(steps, flops, rounds=max(1, sizes.rounds - 1))
        print(f"[composite] sweep {shape.name}: " + ", ".join(
            f"{n} {_ms(timing.median(n)):.0f} ms" for n in IMPLS))
        for impl in IMPLS:
            series[impl].append(
                (shape.tokens, _ms(timing.median(impl)), memory[_key(impl, shape)] / 2**20)
            )
        rows.append({
            "N": shape.tokens, "map": f"{shape.side} x {shape.side}",
            "ours / ref 1 memory": _share(memory[_key(OURS, shape)], memory[_key(REF1, shape)]),
            "ours % ceil": _pct(timing.fraction(OURS)),
            **{f"{i} (ms)": _ms(timing.median(i)) for i in IMPLS},
            **{f"{i} peak (MiB)": f"{memory[_key(i, shape)] / 2**20:,.0f}" for i in IMPLS},
        })
    return markdown_table(SWEEP_COLUMNS, rows), series


def _limits_text(runner: Runner, args: BenchArgs, sizes: Sizes) -> str:
    """Diagnostics of valfusion's fwd+bwd at each level (CPU): kernel time, attention, copies."""
    import resource

    import torch.nn.functional as F

    rows = []
    for shape in sizes.levels:
        steps, modules = composite_steps(shape, args.device, args.dtype, training=True)
        step = steps[OURS]
        step()
        usage = []
        for _ in range(max(2, sizes.rounds)):
            before, clock0 = resource.getrusage(resource.RUSAGE_SELF), runner.clock()
            step()
            after, clock1 = resource.getrusage(resource.RUSAGE_SELF), runner.clock()
            usage.append((
                clock1 - clock0,
                after.ru_stime - before.ru_stime,
                (after.ru_minflt - before.ru_minflt) * resource.getpagesize(),
            ))
        step_s = statistics.median(u[0] for u in usage)
        sys_share = statistics.median(u[1] / u[0] for u in usage)
        faulted = statistics.median(u[2] for u in usage)

        heads = modules[OURS].self_attention.num_heads
        d = shape.channels // heads
        generator = torch.Generator().manual_seed(4)
        # q, k, v in the layer's own layout: (B, heads, N, d) views of (B, N, heads, 3, d).
        buffer = torch.randn(shape.batch, shape.tokens, heads, 3, d, generator=generator)
        q, k, v = (t.transpose(1, 2).to(args.device).requires_grad_() for t in buffer.unbind(3))
        grad = torch.randn(shape.batch, heads, shape.tokens, d, generator=generator)
        grad = grad.to(args.device)

        def attention(q: Tensor = q, k: Tensor = k, v: Tensor = v, grad: Tensor = grad) -> None:
            out = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)

        image = torch.randn(shape.batch, shape.channels, shape.side, shape.side,
                            generator=generator).to(args.device)

        def transpose(image: Tensor = image) -> None:
            image.permute(0, 2, 3, 1).contiguous()

        tokens = torch.randn(shape.batch * shape.tokens, shape.channels,
                             generator=generator).to(args.device)
        weight = torch.randn(shape.channels, shape.channels, generator=generator).to(args.device)

        def projection(tokens: Tensor = tokens, weight: Tensor = weight) -> None:
            torch.mm(tokens, weight.t())

        attention_flops = 3 * 4 * shape.tokens**2 * shape.channels * shape.batch
        projection_flops = 2 * shape.batch * shape.tokens * shape.channels**2
        timing = runner.time({"attention": attention, "transpose": transpose,
                              "projection": projection},
                             attention_flops, rounds=max(1, sizes.rounds - 1))
        attention_s = timing.median("attention")
        attention_rate = timing.fraction("attention")
        projection_rate = timing.fraction("projection") * projection_flops / attention_flops
        # If every FLOP outside the attention kernel ran at the projection GEMM's rate, the
        # attention at its kernel's, and nothing else cost any time:
        total_flops = 3 * composite_flops(shape.channels, shape.tokens, shape.text) * shape.batch
        bound = total_flops / (
            (total_flops - attention_flops) / projection_rate + attention_flops / attention_rate
        )
        rows.append({
            "level": shape.name,
            "bound from the two kernels, % ceil": _pct(bound),
            "attention kernel alone, % ceil": _pct(attention_rate),
            "projection GEMM alone, % ceil": _pct(projection_rate),
            "attention share of step": f"{100 * attention_s / step_s:.0f}%",
            "NCHW <-> token transposes, share": (
                "none: used in place" if shape.tokens >= PER_SAMPLE_MIN_TOKENS
                else f"{100 * 4 * timing.median('transpose') / step_s:.0f}%"
            ),
            "kernel (sys) share": f"{100 * sys_share:.0f}%",
            "fresh pages per step (MiB)": f"{faulted / 2**20:,.0f}",
            "valfusion fwd+bwd (ms)": _ms(step_s),
            "C x H x W": _shape(shape), "B": shape.batch,
        })
        print(f"[composite] limits {shape.name}: sys {100 * sys_share:.0f}%, attention "
              f"{_pct(timing.fraction('attention'))} of ceiling")
    return markdown_table(LIMIT_COLUMNS, rows) + (
        "\nColumns, left to right: the bound that the two kernels' rates put on the whole "
        "step: the step's useful FLOPs over the time they would take if every FLOP outside "
        "attention ran at the projection GEMM's rate, the attention at its kernel's, and "
        "nothing else (norms, gates, copies) took any time; the fused attention kernel "
        "(`F.scaled_dot_product_attention`, forward + backward, q/k/v in the layer's layout) "
        "alone: its useful FLOP/s (3 x 4 N^2 C B) over the GEMM ceiling; one `(B N, C) x "
        "(C, C)` matrix product (the shape of the level's fusion and projection GEMMs) "
        "alone, its FLOP/s over the ceiling; the attention kernel's time over the step's; "
        "for maps under `PER_SAMPLE_MIN_TOKENS` positions, which the layer transposes to "
        "token-major memory (twice forward, twice backward), four times one "
        "`(B, C, H, W) -> (B, H, W, C)` copy over the step (larger NCHW maps are read and "
        "written in place by per-sample GEMMs); the share of the step's CPU time spent in "
        "the kernel (`getrusage` system time: page faults zero-filling fresh memory); the "
        "memory the step faulted in (minor faults x page size); the step's CPU time (the "
        "run's clock). A level whose bound is under 70% cannot meet the 70% target with "
        "these kernels.\n"
    )


def _allocator_text(args: BenchArgs, sizes: Sizes, threads: int) -> str:
    """valfusion's fwd+bwd per level under glibc's defaults and without page faults (CPU)."""
    settings = {"glibc defaults": {}, "no fresh pages": NO_FAULT_MALLOC_ENV}
    workloads = [
        dict(impl=OURS, channels=s.channels, side=s.side, batch=s.batch, text=s.text)
        for s in sizes.levels
    ]
    rounds = 1 if sizes.rounds == 1 else sizes.rounds + 1
    runs: dict[str, list[list[dict[str, float]]]] = {name: [] for name in settings}
    for r in range(rounds):
        # Alternate the settings, the first one changing from round to round.
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for name in order:
            runs[name].append(run_timed_child(
                f"{__name__}:memory_workload", workloads, threads,
                settings[name], args.min_run_time, sizes.gemm_n,
            ))
    rows = []
    for i, shape in enumerate(sizes.levels):
        flops = 3 * composite_flops(shape.channels, shape.tokens, shape.text) * shape.batch

        def per_round(name: str, key: str, i: int = i) -> list[float]:
            return [rnd[i][key] for rnd in runs[name]]

        def best_fraction(name: str, i: int = i, flops: float = flops) -> float:
            # The fastest round's step against the best ceiling of that setting's rounds.
            best_gemm = max(rnd[i]["gemm_flops"] for rnd in runs[name])
            return flops / min(per_round(name, "seconds")) / best_gemm

        default, tuned = (per_round(n, "seconds") for n in settings)
        faulted = {
            name: f"{statistics.median(per_round(name, 'faulted_bytes')) / 2**20:,.0f}"
            for name in settings
        }
        rows.append({
            "level": shape.name,
            "speed-up (best / best)": f"{min(default) / min(tuned):.2f}",
            "speed-up per round, median [min, max]": _spread(
                [d / t for d, t in zip(default, tuned, strict=True)]
            ),
            "defaults, % ceil (best)": _pct(best_fraction("glibc defaults")),
            "no fresh pages, % ceil (best)": _pct(best_fraction("no fresh pages")),
            "glibc defaults, best (ms)": _ms(min(default)),
            "no fresh pages, best (ms)": _ms(min(tuned)),
            "fresh pages per step, defaults (MiB)": faulted["glibc defaults"],
            "fresh pages per step, no fresh pages (MiB)": faulted["no fresh pages"],
            "C x H x W": _shape(shape), "B": shape.batch,
        })
        print(f"[composite] allocator {shape.name}: best {_ms(min(default)):.0f} ms "
              f"-> {_ms(min(tuned)):.0f} ms")
    env = " ".join(f"`{k}={v}`" for k, v in NO_FAULT_MALLOC_ENV.items())
    return (
        "\n## The allocator: the same step without page faults\n\n"
        + markdown_table(ALLOCATOR_COLUMNS, rows)
        + f"\nEach setting runs in its own subprocess (glibc reads its variables at start), "
        f"{rounds} round(s) alternating between the two; each child times valfusion's "
        "fwd+bwd at every level (blocked_autorange median; CPU time for one thread) and "
        f"its own {sizes.gemm_n}^3 GEMM ceiling. The run-to-run spread of this machine is "
        "larger than the effect, so the speed-up is given first between the fastest rounds of "
        "the two settings (load from other jobs only ever adds time), then as the median "
        "[min, max] of the per-round ratios. \"glibc defaults\": no `MALLOC_*` variable. \"no fresh pages\": "
        f"{env}, so that no tensor gets its own `mmap` and freed memory stays in the heap: "
        "each step reuses the pages of the one before instead of having the kernel "
        "zero-fill new ones. The layer is the same; this is a setting of the process that "
        "runs it (the price: the process keeps its peak memory resident), which users "
        "training on CPU can set too (`docs/how-to/benchmarks.md`). The targets "
        "(`composite.md`) are judged under glibc's defaults.\n"
    )


def _plot(series: dict[str, list[tuple]], shape: Shape, args: BenchArgs) -> None:
    if not args.write:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, points in series.items():
        n = [p[0] for p in points]
        ax_t.plot(n, [p[1] for p in points], marker="o", label=impl)
        ax_m.plot(n, [p[2] for p in points], marker="o", label=impl)
    for ax, label in ((ax_t, "forward + backward (ms)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H x W")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    fig.suptitle(
        f"Composite transformer, {shape.channels} ch, batch {shape.batch}, {args.dtype}, "
        f"{args.device}"
    )
    fig.tight_layout()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "composite_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------- entry point


def run(args: BenchArgs) -> None:
    """Run the composite-transformer benchmarks; write ``composite*.md`` and the sweep plot."""
    threads = resolve_threads(args, cpu_default=1)
    with num_threads(threads):
        _run(args, threads)


def _run(args: BenchArgs, threads: int) -> None:
    sizes = TINY if args.tiny else FULL
    sections = selected_sections(args, SECTIONS)
    if "levels" in sections:
        for shape in (*sizes.levels, sizes.high_res):
            _check_same_function(shape, args.device, args.dtype)
    runner = Runner(args, sizes, threads)
    shapes = list(sizes.sweep) if "sweep" in sections else []
    if "levels" in sections and _key(OURS, sizes.high_res) not in {_key(OURS, s) for s in shapes}:
        shapes.append(sizes.high_res)
    memory = _peak_memory(shapes, args, threads) if shapes else {}
    memory_method = (
        "`torch.cuda.max_memory_allocated` above the allocation before the step"
        if torch.device(args.device).type == "cuda"
        else "`VmHWM - VmRSS` of a subprocess around one step, after a warm-up step "
        "(`_harness.run_peak_rss_child`)"
    )
    method = (
        f"\nTimer: {runner.clock_name}; {threads} intra-op thread(s); compute dtype "
        f"{args.dtype}{' (autocast)' if args.dtype != 'fp32' else ''}; "
        f"{allocator_note()}. Each row: median over "
        f"{sizes.rounds} alternating round(s) of the `torch.utils.benchmark` blocked_autorange "
        f"median (min_run_time={args.min_run_time} s); ratios and fractions of the ceiling are "
        f"medians of the per-round values; the ceiling is the best rate of a {runner.gemm_n}^3 "
        "product, as `torch.mm` and as a 1x1 `F.conv2d`, timed in every round of the case. FLOP formula and implementations: `benchmarks/bench_composite.py` "
        f"docstring. Peak memory: {memory_method}.\n\n"
    )
    if "levels" in sections:
        levels_table, level_timings = _levels_section(runner, args, sizes)
        high_res_table, _ = _high_res_section(runner, args, sizes, memory)
        text = environment_header("Composite transformer: forward and forward + backward",
                                  device=args.device)
        text += method
        first = sizes.levels[0]
        text += f"## VAL's three levels (batch {first.batch}, text {first.text})\n\n"
        text += levels_table
        text += f"\n## High resolution (N = {sizes.high_res.tokens})\n\n" + high_res_table
        text += "\n" + _targets(level_timings, memory, sizes)
        write_result("composite.md", text, args)

    if "parts" in sections:
        parts = environment_header("Composite transformer parts: forward + backward",
                                   device=args.device)
        parts += method + _parts_text(runner, args, sizes)
        write_result("composite_parts.md", parts, args)

    if "sweep" in sections:
        sweep_table, series = _sweep_text(runner, args, sizes, memory)
        sweep = environment_header("Composite transformer: time and peak memory against N",
                                   device=args.device)
        sweep += method + sweep_table + "\n![time and memory against N](composite_sweep.png)\n"
        write_result("composite_sweep.md", sweep, args)
        _plot(series, sizes.sweep[-1], args)

    if "limits" in sections and torch.device(args.device).type == "cpu":
        limits = environment_header("Composite transformer: what limits valfusion's speed",
                                    device=args.device)
        limits += method + _limits_text(runner, args, sizes)
        limits += _allocator_text(args, sizes, threads)
        write_result("composite_limits.md", limits, args)


def _targets(timings: dict, memory: dict[MemoryKey, int], sizes: Sizes) -> str:
    """The project's performance targets (each stated in the table), with its measured figure."""
    names = [s.name for s in sizes.levels]
    r1, r2 = (_sum_ratios(timings, "fwd+bwd", sizes, ref) for ref in (REF1, REF2))
    fractions = {n: timings[("fwd+bwd", n)].fractions(OURS) for n in names}
    mem = memory[_key(OURS, sizes.high_res)] / max(memory[_key(REF1, sizes.high_res)], 1)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def pct(values: list[float]) -> str:
        return _spread([100 * v for v in values], "{:.0f}") + " %"

    rows = [
        ("fwd+bwd summed over the levels, >= 1.5x faster than ref 1", _spread(r1) + " x",
         verdict(statistics.median(r1) >= 1.5)),
        ("fwd+bwd summed over the levels, >= 2x faster than ref 2", _spread(r2) + " x",
         verdict(statistics.median(r2) >= 2.0)),
        *(
            (f"fwd+bwd at the {n} level, >= 70% of the GEMM ceiling", pct(f),
             verdict(statistics.median(f) >= 0.70))
            for n, f in fractions.items()
        ),
        (f"peak memory of fwd+bwd at N = {sizes.high_res.tokens}, <= 30% of ref 1's",
         f"{100 * mem:.0f}%", verdict(mem <= 0.30)),
    ]
    # A ratio to a reference is the fraction of the ceiling seen from the other side: what
    # fraction valfusion would need, summed over the levels, for the reference's measured
    # time to be `factor` times its own.
    level_timings = [timings[("fwd+bwd", n)] for n in names]
    total_flops = sum(t.flops for t in level_timings)
    ceiling = statistics.median(t.ceiling[0] for t in level_timings)
    ours_s = sum(t.median(OURS) for t in level_timings)
    needs = []
    for ref, factor in ((REF1, 1.5), (REF2, 2.0)):
        ref_s = sum(t.median(ref) for t in level_timings)
        needs.append(
            f"{factor:g}x against {ref} needs the three levels in {_ms(ref_s / factor):,.0f} ms "
            f"({100 * total_flops / (ref_s / factor) / ceiling:.0f}% of the ceiling)"
        )
    return (
        "## Targets\n\nMeasured: median over rounds [min, max] of the "
        "per-round values.\n\n" + markdown_table(["target", "measured", "status"], rows)
        + "\nWhat limits a level's fraction of the ceiling (on the CPU) is measured in "
        "`composite_limits.md`, from the same run: the attention kernel's and the projection "
        "GEMM's own rates at the level's shapes, the bound they put on the step, and the "
        "time lost to page faults and layout copies. The ratios to the references are "
        "limited by the same: at the references' measured times (medians), "
        + "; ".join(needs)
        + f", against {_ms(ours_s):,.0f} ms ({100 * total_flops / ours_s / ceiling:.0f}%) "
        "measured (fractions: the levels' useful fwd+bwd FLOPs over the time, at the "
        "median of the levels' ceilings).\n"
    )
