"""Shared pieces of the benchmark suite: timing, the GEMM ceiling, environment header, tables.

Every benchmark times the thing *and its reference in the same run* and reports ratios,
because the machines are noisy (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import benchmark as tbench

RESULTS_DIR = Path(__file__).resolve().parent / "results"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchArgs:
    """Options every benchmark accepts."""

    device: str = "cpu"
    dtype: str = "fp32"
    tiny: bool = False  # smoke-run sizes used by the test suite
    min_run_time: float = 1.0
    out_dir: Path = RESULTS_DIR
    write: bool = True


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where to write results")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")


def args_from_namespace(ns: argparse.Namespace) -> BenchArgs:
    return BenchArgs(
        device=ns.device,
        dtype=ns.dtype,
        tiny=ns.tiny,
        min_run_time=ns.min_run_time,
        out_dir=ns.out_dir,
        write=not ns.no_write,
    )


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], min_run_time: float = 1.0, label: str = "") -> float:
    """Median seconds per call of ``fn`` (torch.utils.benchmark handles warm-up and sync)."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, label=label, num_threads=torch.get_num_threads())
    fn()  # warm-up outside the measurement (first-call allocations, lazy init)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def gemm_flops_per_second(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                          min_run_time: float = 1.0) -> float:
    """The machine's ceiling: FLOP/s of an ``n x n x n`` matrix product (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: torch.mm(a, b), min_run_time=min_run_time)
    return 2 * n**3 / seconds


def environment_header(title: str, argv: Sequence[str] | None = None, device: str = "cpu") -> str:
    """Markdown header: the command that made the file and the environment it ran in."""
    argv = list(sys.argv if argv is None else argv)
    cmd = " ".join(shlex.quote(a) for a in argv)
    dev = torch.device(device)
    if dev.type == "cuda":
        dev_name = torch.cuda.get_device_name(dev)
    else:
        dev_name = platform.processor() or platform.machine()
    lines = [
        f"# {title}",
        "",
        f"- command: `{cmd}`",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}",
        f"- device: {dev.type} ({dev_name})",
        "",
    ]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def write_result(name: str, text: str, args: BenchArgs) -> Path | None:
    """Write ``text`` to ``out_dir/name`` atomically (temporary file, then rename)."""
    print(text)
    if not args.write:
        return None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / name
    fd, tmp = tempfile.mkstemp(dir=args.out_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
