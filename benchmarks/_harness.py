"""Shared pieces of the benchmark suite: timing, the GEMM ceiling, environment header, tables.

Every benchmark times the thing *and its reference in the same run* and reports ratios,
because the machines are noisy (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from valfusion._io import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where a source checkout keeps its results (``benchmarks/results/``; not in the wheel)."""

INSTALLED_RESULTS_DIR = "valfusion-bench-results"
"""Where results go from an installed package: this folder in the current directory."""


def default_out_dir() -> Path:
    """``benchmarks/results/`` in a source checkout, else ``./valfusion-bench-results``.

    The checkout's folder holds the committed results; the wheel does not carry it, so an
    installed package writes into the directory it is run from.
    """
    return RESULTS_DIR if RESULTS_DIR.is_dir() else Path.cwd() / INSTALLED_RESULTS_DIR


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchArgs:
    """Options every benchmark accepts."""

    device: str = "cpu"
    dtype: str = "fp32"
    tiny: bool = False  # smoke-run sizes used by the test suite
    min_run_time: float = 1.0
    out_dir: Path = field(default_factory=default_out_dir)
    write: bool = True
    threads: int | None = None  # intra-op threads; None: the benchmark's own default
    clock: str = "auto"  # "auto", "cpu" (process CPU time) or "wall"
    only: str | None = None  # comma-separated sections, for benchmarks that have several


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu or cuda (default: cpu; cuda for --suite gpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="compute dtype (bf16, fp16: autocast)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 for every fp32 matrix product and convolution on CUDA "
                             "(torch.backends.cuda.matmul.allow_tf32 and "
                             "torch.backends.cudnn.allow_tf32), for valfusion and the "
                             "references alike; default: PyTorch's own defaults")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement (default: 1; 0.1 for --suite gpu)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where to write results (default: benchmarks/results/ in a source "
                             f"checkout, else ./{INSTALLED_RESULTS_DIR})")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: each benchmark's own choice)")
    parser.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                        help="timer: process CPU time, wall time, or auto (CPU time for one "
                             "thread on CPU, else wall)")
    parser.add_argument("--only", default=None, metavar="SECTIONS",
                        help="comma-separated sections of a benchmark that has several "
                             "(composite: levels,parts,sweep,limits); with --suite, the "
                             "suite's parts to run")


def args_from_namespace(ns: argparse.Namespace) -> BenchArgs:
    return BenchArgs(
        device=ns.device or "cpu",
        dtype=ns.dtype,
        tiny=ns.tiny,
        min_run_time=1.0 if ns.min_run_time is None else ns.min_run_time,
        out_dir=default_out_dir() if ns.out_dir is None else ns.out_dir,
        write=not ns.no_write,
        threads=getattr(ns, "threads", None),
        clock=getattr(ns, "clock", "auto"),
        only=getattr(ns, "only", None),
    )


def allow_tf32(enabled: bool = True) -> None:
    """Let CUDA run fp32 matrix products and cuDNN fp32 convolutions in TF32 (process-wide).

    PyTorch's defaults differ between the two (convolutions TF32, matrix products not), which
    favours an implementation built from 1x1 convolutions over one built from matrix
    products; the benchmarks' ``--tf32`` sets both, so both sides compute alike.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], min_run_time: float = 1.0, label: str = "",
            timer: Callable[[], float] | None = None, warmup: bool = True) -> float:
    """Median seconds per call of ``fn`` (torch.utils.benchmark handles warm-up and sync).

    ``timer`` is the clock (default: wall time, ``timeit.default_timer``); see
    :func:`make_clock`. ``warmup=False`` skips the extra first call (for callers that
    warmed ``fn`` up already and whose calls take seconds).
    """
    # Imported here: importing it loads torch.utils.cpp_extension, which logs a warning on
    # machines with a CUDA toolkit but no GPU, before a one-line usage error could be shown.
    from torch.utils import benchmark as tbench

    timer_kw = {} if timer is None else {"timer": timer}
    measurement = tbench.Timer(stmt="fn()", globals={"fn": fn}, label=label,
                               num_threads=torch.get_num_threads(), **timer_kw)
    if warmup:
        fn()  # warm-up outside the measurement (first-call allocations, lazy init)
    return measurement.blocked_autorange(min_run_time=min_run_time).median


CUDA_GEMM_N = 8192
"""Side of the ceiling GEMM on a GPU: a 2048^3 product is too small to fill one."""


def ceiling_gemm_size(args: BenchArgs, cpu_n: int = 2048, tiny_n: int = 256) -> int:
    """Side ``n`` of the ``n x n x n`` GEMM whose rate is a run's ceiling."""
    if args.tiny:
        return tiny_n
    return CUDA_GEMM_N if torch.device(args.device).type == "cuda" else cpu_n


def ceiling_products(n: int, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> dict[str, Callable[[], object]]:
    """The two routes to one ``n x n x n`` product (``2 n^3`` FLOPs) whose best rate is a
    run's ceiling: ``torch.mm`` (BLAS on a CPU: MKL in the x86 wheels; cuBLAS on a GPU) and a
    1x1 ``F.conv2d`` of ``(n / 64, n, 8, 8)`` by ``(n, n, 1, 1)`` (oneDNN on an x86 CPU,
    cuDNN on a GPU). Which one is faster depends on the machine: on an AMD EPYC with
    AVX-512 oneDNN ran at twice MKL's rate, on one with AVX2 at 0.8 of it
    (``benchmarks/results/cpu_gemm_paths.md``), so a ceiling of either alone can halve or
    flatter every fraction of it.

    Args:
        n: the side, a multiple of 64.
        device: where to run.
        dtype: the operands' dtype.

    Returns:
        ``{"torch.mm": fn, "1x1 conv": fn}``, each running its product once.
    """
    if n % 64:
        raise ValueError(f"n: expected a multiple of 64, got {n}")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    maps = torch.randn(n // 64, n, 8, 8, device=device, dtype=dtype)
    weight = torch.randn(n, n, 1, 1, device=device, dtype=dtype)
    return {
        "torch.mm": lambda: torch.mm(a, b),
        "1x1 conv": lambda: F.conv2d(maps, weight),
    }


def gemm_flops_per_second(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                          min_run_time: float = 1.0,
                          timer: Callable[[], float] | None = None) -> float:
    """The machine's ceiling: the best FLOP/s of the :func:`ceiling_products` (``2 n^3``
    FLOPs each)."""
    return max(
        2 * n**3 / time_fn(fn, min_run_time=min_run_time, timer=timer)
        for fn in ceiling_products(n, device, dtype).values()
    )


# ---------------------------------------------------------------- threads, clock, rounds


def resolve_threads(args: BenchArgs, cpu_default: int = 1) -> int:
    """Intra-op threads for a run: ``args.threads``, else ``cpu_default`` on CPU (else as is)."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads: expected a positive count, got {args.threads}")
        return args.threads
    if torch.device(args.device).type == "cpu":
        return cpu_default
    return torch.get_num_threads()


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``, then restore the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def selected_sections(args: BenchArgs, sections: Sequence[str]) -> tuple[str, ...]:
    """The sections to run: all of ``sections``, or those named in ``args.only``."""
    if args.only is None:
        return tuple(sections)
    chosen = tuple(part.strip() for part in args.only.split(",") if part.strip())
    unknown = [c for c in chosen if c not in sections]
    if unknown:
        raise ValueError(f"only: expected sections from {list(sections)}, got {unknown}")
    return chosen


def allocator_note() -> str:
    """The malloc/THP environment variables that change how CPU memory is served, if set."""
    names = sorted(k for k in os.environ if k.startswith("MALLOC_") or k.startswith("GLIBC_TUNABLES")
                   or k == "THP_MEM_ALLOC_ENABLE" or k == "LD_PRELOAD")
    if not names:
        return "default allocator settings (glibc malloc, no tuning variables set)"
    return "allocator environment " + ", ".join(f"`{k}={os.environ[k]}`" for k in names)


def make_clock(args: BenchArgs, threads: int) -> tuple[Callable[[], float], str]:
    """The timer to use and its description.

    ``"cpu"``: ``time.process_time``, the CPU time of this process. With one intra-op
    thread on a CPU it counts only the time the benchmark actually ran, so other jobs on a
    shared machine (which deschedule it) do not inflate it; page faults and cache misses
    still count. ``"wall"``: wall time. ``"auto"``: ``"cpu"`` for one thread on a CPU device,
    else ``"wall"`` (with several threads CPU time would add up the threads, and on CUDA the
    host clock is idle while the device works).
    """
    clock = args.clock
    if clock not in ("auto", "cpu", "wall"):
        raise ValueError(f"clock: expected 'auto', 'cpu' or 'wall', got {clock!r}")
    if clock == "auto":
        clock = "cpu" if torch.device(args.device).type == "cpu" and threads == 1 else "wall"
    if clock == "cpu":
        return time.process_time, "process CPU time (`time.process_time`)"
    if torch.device(args.device).type == "cuda":
        # A bare wall clock would time how fast kernels are queued, not how fast they run.
        return _synchronized_wall_time, (
            "wall time read after `torch.cuda.synchronize()` (so every queued kernel counts)"
        )
    return timeit.default_timer, "wall time (`timeit.default_timer`)"


def _synchronized_wall_time() -> float:
    torch.cuda.synchronize()
    return timeit.default_timer()


def interleaved_rounds(fns: Mapping[str, Callable[[], object]], rounds: int,
                       min_run_time: float, timer: Callable[[], float] | None = None,
                       warmup: bool = True) -> dict[str, list[float]]:
    """Time every function once per round, alternating, for ``rounds`` rounds.

    Each function is warmed up once first (``warmup``). The order of the functions rotates
    from round to round, so that a burst of load from other jobs does not hit one of them
    systematically. Returns the per-round median seconds per call of each function.
    """
    names = list(fns)
    if warmup:
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(time_fn(fns[name], min_run_time, timer=timer, warmup=False))
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[r] / denominator[r]``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


# ---------------------------------------------------------------- peak memory


def cuda_peak_memory(fn: Callable[[], object], device: str | torch.device = "cuda") -> int:
    """Bytes allocated at the high-water mark of ``fn()`` above what was allocated before."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key} line")
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``; Linux >= 4.0). False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_peak_rss_child(factory: str, workloads: Sequence[Mapping[str, Any]],
                       threads: int = 1) -> list[int]:
    """Peak resident memory of one call of each workload, measured in a fresh subprocess.

    The child imports ``factory`` (``"package.module:function"``). For each workload it
    calls ``factory(**workload)`` to build the modules and inputs and get a zero-argument
    ``step``, runs ``step`` once to warm up, drops the garbage, reads the resident set size
    ``VmRSS``, resets the peak counter ``VmHWM`` (``/proc/self/clear_refs``), runs ``step``
    once more and records ``VmHWM - VmRSS``: the high-water mark of the memory the step
    allocated above what existed before it (inputs, weights). glibc is told to serve every
    allocation of 64 KiB or more with its own ``mmap`` (``MALLOC_MMAP_THRESHOLD_=65536``),
    so freed tensors go back to the OS at once and the resident set follows the live
    tensors (to the page).

    Returns:
        Bytes, one value per workload.
    """
    module, _, function = factory.partition(":")
    code = (
        "import json, sys, gc, torch\n"
        f"from {__package__} import _harness as h\n"
        f"torch.set_num_threads({int(threads)})\n"
        f"from {module} import {function} as factory\n"
        "peaks = []\n"
        "for workload in json.loads(sys.argv[1]):\n"
        "    step = factory(**workload)\n"
        "    step(); gc.collect()\n"
        "    base = h._proc_status_bytes('VmRSS')\n"
        "    if not h._reset_peak_rss(): raise SystemExit('cannot reset VmHWM')\n"
        "    step()\n"
        "    peaks.append(h._proc_status_bytes('VmHWM') - base)\n"
        "    del step; gc.collect()\n"
        "print(json.dumps(peaks))\n"
    )
    # The child's own allocator settings, whatever the parent runs under (a parent with
    # mmap disabled, say, would keep freed memory resident and hide the peak).
    peaks = _run_child(code, workloads, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                       f"memory subprocess for {factory}")
    return [int(v) for v in peaks]


def _run_child(code: str, workloads: Sequence[Mapping[str, Any]], malloc_env: Mapping[str, str],
               what: str) -> list[Any]:
    """Run ``code`` in a fresh Python with the workloads as JSON in ``argv[1]``.

    The child gets the parent's environment without its glibc allocator variables
    (``MALLOC_*``, ``GLIBC_TUNABLES``), plus ``malloc_env``, and the folder this package was
    imported from on ``PYTHONPATH`` (:func:`child_pythonpath`). Returns the JSON list the child prints on its last line.
    """
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    env.update(malloc_env)
    env["PYTHONPATH"] = child_pythonpath(env.get("PYTHONPATH"))
    payload = json.dumps([dict(w) for w in workloads])
    done = subprocess.run([sys.executable, "-c", code, payload], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_pythonpath(current: str | None) -> str:
    """``PYTHONPATH`` for a child Python that imports this package by the same name.

    The folder the top-level package was imported from goes first: the repository root
    for ``benchmarks`` (a source checkout), ``site-packages`` (or the checkout, for an
    editable install) for ``valfusion.benchmarks``.
    """
    top = sys.modules[__package__.partition(".")[0]]
    root = str(Path(top.__file__ or __file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, current]))


#: glibc settings under which a training step faults in no fresh memory: no tensor is served
#: by its own ``mmap`` (threshold 4 GiB) and freed heap memory is kept (trim threshold
#: 16 GiB), so every step reuses the pages of the one before. The price: the process keeps
#: its peak memory resident.
NO_FAULT_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def run_timed_child(factory: str, workloads: Sequence[Mapping[str, Any]], threads: int = 1,
                    malloc_env: Mapping[str, str] | None = None, min_run_time: float = 1.0,
                    gemm_n: int = 2048) -> list[dict[str, float]]:
    """Time one call of each workload in a fresh subprocess under given glibc malloc settings.

    glibc reads its ``MALLOC_*`` variables once, when the process starts, so comparing
    allocator settings takes one process per setting. The child removes every ``MALLOC_*``
    variable and ``GLIBC_TUNABLES`` of the parent's environment and sets ``malloc_env``
    (None or empty: glibc's defaults). For each workload it calls ``factory(**workload)``
    (``"package.module:function"``, as :func:`run_peak_rss_child`) to get a zero-argument
    ``step``, runs it once to warm up,
    times it with ``torch.utils.benchmark`` (``blocked_autorange`` median; process CPU
    time for one thread, else wall time, as :func:`make_clock`), then runs it once more
    under ``getrusage``. It also times the ceiling (``gemm_n^3`` fp32, the best of
    :func:`ceiling_products`) at the end.

    Returns:
        One dict per workload: ``seconds`` (median seconds per step), ``sys_seconds``
        (kernel time of the extra step), ``faulted_bytes`` (minor faults x page size of the
        extra step) and ``gemm_flops`` (the child's ceiling, FLOP/s).
    """
    module, _, function = factory.partition(":")
    code = (
        "import json, sys, time, timeit, resource, torch\n"
        f"from {__package__} import _harness as h\n"
        f"clock = time.process_time if {int(threads)} == 1 else timeit.default_timer\n"
        f"torch.set_num_threads({int(threads)})\n"
        f"from {module} import {function} as factory\n"
        "out = []\n"
        "for workload in json.loads(sys.argv[1]):\n"
        "    step = factory(**workload)\n"
        f"    seconds = h.time_fn(step, {float(min_run_time)!r}, timer=clock)\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    step()\n"
        "    after = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    out.append(dict(seconds=seconds, sys_seconds=after.ru_stime - before.ru_stime,\n"
        "                    faulted_bytes=(after.ru_minflt - before.ru_minflt)\n"
        "                    * resource.getpagesize()))\n"
        "    del step\n"
        f"gemm = h.gemm_flops_per_second(n={int(gemm_n)}, min_run_time={float(min_run_time)!r},\n"
        "                                timer=clock)\n"
        "for row in out: row['gemm_flops'] = gemm\n"
        "print(json.dumps(out))\n"
    )
    rows = _run_child(code, workloads, malloc_env or {}, f"timing subprocess for {factory}")
    return [dict(row) for row in rows]


# ---------------------------------------------------------------- output


def environment_header(title: str, argv: Sequence[str] | None = None, device: str = "cpu") -> str:
    """Markdown header: the command that made the file and the machine it ran on.

    Names the CPU (model, cores, logical CPUs), the GPU on CUDA (name, memory, compute
    capability, driver), the torch / CUDA / cuDNN versions and the precision flags that
    change what an fp32 matrix product computes (TF32, ``float32_matmul_precision``).
    """
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None) if argv is None else None
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "__main__.py":
        # How `python -m benchmarks` (checkout) or `python -m valfusion.benchmarks` was run:
        # the name it was run by (an editable install maps the second to the checkout's
        # folder), else the name its path implies.
        parts = Path(argv[0]).parts
        module: str | None = None
        if parts[-3:-1] == ("valfusion", "benchmarks"):
            module = "valfusion.benchmarks"
        elif parts[-2:-1] == ("benchmarks",):
            module = "benchmarks"
        if main_spec is not None and main_spec.name.endswith(".__main__"):
            module = main_spec.name.removesuffix(".__main__")
        if module is not None:
            argv = ["python", "-m", module, *argv[1:]]
    cmd = " ".join(shlex.quote(a) for a in argv)
    dev = torch.device(device)
    lines = [
        f"# {title}",
        "",
        f"- command: `{cmd}`",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; intra-op threads {torch.get_num_threads()}",
        f"- CPU: {cpu_description()}",
    ]
    if dev.type == "cuda":
        lines.append(f"- device: cuda, {gpu_description(dev)}")
        lines.append(
            f"- CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
            f"{precision_flags()}"
        )
    else:
        lines.append(f"- device: {dev.type}; {precision_flags(cuda=False)}")
    if dev.type == "cpu":
        from valfusion.layers import _kernels

        lines.append(
            f"- CPU capability {torch.backends.cpu.get_cpu_capability()}; the fused kernels' "
            f"fp32 GEMM route here (`cpu_gemm_route()`): {_kernels.cpu_gemm_route()}"
        )
    lines.append("")
    return "\n".join(lines)


def cpu_description() -> str:
    """CPU model, physical cores and logical CPUs (and how many this process may use)."""
    model, cores = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        info = ""
    processors = [dict(re.findall(r"^([^:\n]+?)\s*:\s*(.*)$", block, re.MULTILINE))
                  for block in info.split("\n\n") if block.strip()]
    names = [p["model name"] for p in processors if p.get("model name")]
    if names:
        model = names[0]
    pairs = {(p.get("physical id"), p["core id"]) for p in processors if "core id" in p}
    if pairs:
        cores = len(pairs)
    logical = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    text = model + (f", {cores} physical cores" if cores else "")
    text += f", {logical} logical CPUs"
    if usable != logical:
        text += f" ({usable} usable by this process)"
    return text


def gpu_description(device: torch.device) -> str:
    """GPU name, memory, compute capability, multiprocessors and driver (when known)."""
    props = torch.cuda.get_device_properties(device)
    text = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, {props.multi_processor_count} SMs")
    driver = _nvidia_driver()
    return text + (f", driver {driver}" if driver else "")


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def precision_flags(cuda: bool = True) -> str:
    """The flags that decide how fp32 matrix products and convolutions are computed."""
    text = f"`torch.get_float32_matmul_precision()` = `{torch.get_float32_matmul_precision()}`"
    if not cuda:
        return text
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return (
        f"TF32 allowed in fp32 matrix products: {matmul} "
        "(`torch.backends.cuda.matmul.allow_tf32`), in fp32 convolutions: "
        f"{conv} (`torch.backends.cudnn.allow_tf32`); {text}"
        + ("" if matmul == conv else
           " - unequal: PyTorch's defaults, which favour 1x1 convolutions over matrix products")
    )


def markdown_table(headers: Sequence[str],
                   rows: Sequence[Sequence[object] | Mapping[str, object]]) -> str:
    """A Markdown table; a row is a sequence in ``headers`` order or a mapping by header.

    A mapping row leaves the columns it lacks empty, so a table's column order is stated
    once, in ``headers``. The tables put the row's name first and the comparisons (ratios,
    fractions of the ceiling) right after it, the absolute figures they come from later,
    so that what matters is on screen in a wide table.
    """

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    def cells(row: Sequence[object] | Mapping[str, object]) -> list[object]:
        if not isinstance(row, Mapping):
            return list(row)
        unknown = set(row) - set(headers)
        if unknown:
            raise KeyError(f"row has cells for columns not in the table: {sorted(unknown)}")
        return [row.get(h, "") for h in headers]

    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(cell(v) for v in cells(row)) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_result(name: str, text: str, args: BenchArgs) -> Path | None:
    """Write ``text`` to ``out_dir/name`` atomically (temporary file, then rename)."""
    print(text)
    if not args.write:
        return None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = atomic_write(args.out_dir / name, lambda handle: handle.write(text.encode("utf-8")))
    print(f"wrote {path}")
    return path
