"""The prepared GPU run: the figures that matter first, each part written as it finishes.

``valfusion bench --suite gpu`` (``bash benchmarks/run_gpu.sh`` in a checkout) runs the parts
below in order, each in its own Python process (``--tf32`` is a process-wide switch, and a
part that fails, say out of memory, does not take the others with it), and writes

- ``OUT/bf16/``, ``OUT/fp32-tf32/``, ``OUT/fp32/``: each part's Markdown, written by its
  benchmark as soon as the part ends, so a run cut short keeps every part that finished;
- ``OUT/suite.md``: the parts, their status and time, rewritten after every part.

The estimates are for an H100/H200-class GPU at ``--min-run-time 0.1`` (the suite's default),
process start and CUDA initialisation included; they sum to about 8 minutes. Order: bf16
autocast (how people train) before fp32 with TF32 allowed on both sides, the composite block
at VAL's three levels before the training step, the parts and the sweep over N, and last
the losses and Recall@K.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from valfusion._io import atomic_write

from ._harness import (
    child_pythonpath,
    default_out_dir,
    environment_header,
    markdown_table,
)


@dataclass(frozen=True)
class Part:
    """One benchmark run of a suite: ``python -m ... BENCH --dtype DTYPE [--tf32] [--only ONLY]``."""

    name: str
    bench: str
    dtype: str
    tf32: bool
    only: str | None
    estimate_s: int  # on an H100/H200-class GPU, process start included
    measures: str

    @property
    def precision(self) -> str:
        """The results folder: ``bf16``, ``fp32-tf32`` or ``fp32``."""
        return f"{self.dtype}-tf32" if self.tf32 else self.dtype


_LEVELS = ("VAL's three levels (batch 32): fwd and fwd+bwd, the sum over the levels against "
           "ref 1 and ref 2, each level's % of the {} GEMM ceiling; N = 4096 with the peak "
           "memory of fwd+bwd (`torch.cuda.max_memory_allocated`) against ref 1's")
_STEP = "the training step of the reference VAL model per composer, against refs 1 and 2"

GPU_SUITE = (
    Part("levels-bf16", "composite", "bf16", False, "levels", 60, _LEVELS.format("bf16")),
    Part("levels-fp32-tf32", "composite", "fp32", True, "levels", 60,
         _LEVELS.format("fp32 (TF32)")),
    Part("train-step-bf16", "train_step", "bf16", False, None, 60, _STEP),
    Part("train-step-fp32-tf32", "train_step", "fp32", True, None, 60, _STEP),
    Part("parts-bf16", "composite", "bf16", False, "parts", 40,
         "the self-attention and preservation parts alone, fwd+bwd, at the three levels"),
    Part("parts-fp32-tf32", "composite", "fp32", True, "parts", 40,
         "the self-attention and preservation parts alone, fwd+bwd, at the three levels"),
    Part("sweep-bf16", "composite", "bf16", False, "sweep", 45,
         "fwd+bwd time and peak memory against N (512 ch, batch 8, N = 64 ... 4096)"),
    Part("losses-bf16", "losses", "bf16", False, None, 40,
         "the pairwise losses against their explicit references"),
    Part("recall-fp32", "recall", "fp32", False, None, 90,
         "Recall@K against GEMM + top-K, RetrievalRecall and a sort loop"),
)
"""About 8 minutes on an H100/H200 (the sum of the estimates: 495 s; not yet measured)."""

SUITES = {"gpu": GPU_SUITE}
SUITE_DEVICES = {"gpu": "cuda"}
"""The device a suite runs on unless ``--device`` says otherwise (``--device cpu --tiny``: a
dry run of every part on the CPU, as the tests do)."""
SUITE_MIN_RUN_TIME = 0.1
"""Seconds per measurement: GPU timings are steady, and the budget is minutes."""

COLUMNS = ("part", "status", "seconds", "estimate (s)", "results", "measures")


def suite_parts(name: str, only: str | None) -> tuple[Part, ...]:
    """The parts of suite ``name`` to run: all, or those named in ``only`` (comma-separated)."""
    parts = SUITES[name]
    if only is None:
        return parts
    chosen = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in {p.name for p in parts}]
    if unknown or not chosen:
        raise ValueError(f"--only: expected parts of the {name} suite from "
                         f"{[p.name for p in parts]}, got {unknown or only!r}")
    return tuple(p for p in parts if p.name in chosen)


def part_command(part: Part, ns: argparse.Namespace, out_dir: Path) -> list[str]:
    """The command line that runs ``part`` with the suite's options (``ns``: the parsed CLI)."""
    min_run_time = SUITE_MIN_RUN_TIME if ns.min_run_time is None else ns.min_run_time
    cmd = [sys.executable, "-m", __package__, part.bench, "--device", ns.device,
           "--dtype", part.dtype, "--min-run-time", str(min_run_time),
           "--out-dir", str(out_dir / part.precision)]
    if part.tf32:
        cmd.append("--tf32")
    if part.only is not None:
        cmd += ["--only", part.only]
    if ns.tiny:
        cmd.append("--tiny")
    if ns.threads is not None:
        cmd += ["--threads", str(ns.threads)]
    if ns.clock != "auto":
        cmd += ["--clock", ns.clock]
    return cmd


def run_suite(name: str, parts: tuple[Part, ...], ns: argparse.Namespace) -> int:
    """Run ``parts`` of suite ``name`` in order, each in a child process; 1 if any failed.

    ``ns`` is the parsed command line (its ``device``, ``tiny``, ``min_run_time``,
    ``threads``, ``clock`` and ``out_dir`` go to every part).
    """
    out_dir = default_out_dir() if ns.out_dir is None else ns.out_dir
    env = {**os.environ, "PYTHONPATH": child_pythonpath(os.environ.get("PYTHONPATH")),
           "PYTHONUNBUFFERED": "1"}
    rows = {p.name: _row(p, "not run yet") for p in parts}
    header = environment_header(f"The {name.upper()} suite", device=ns.device)
    header += (f"Parts in the order they ran, each in its own process; results in the "
               f"folder named by the part's precision. Estimates: on an H100/H200-class GPU "
               f"(sum {sum(p.estimate_s for p in parts)} s).\n\n")
    failed = False
    for part in parts:
        print(f"[suite] {part.name}: {part.measures} (about {part.estimate_s} s)", flush=True)
        start = time.monotonic()
        code = subprocess.call(part_command(part, ns, out_dir), env=env)
        seconds = time.monotonic() - start
        status = "done" if code == 0 else f"FAILED (exit {code})"
        failed |= code != 0
        rows[part.name] = _row(part, status, seconds)
        print(f"[suite] {part.name}: {status} in {seconds:.0f} s", flush=True)
        _write_log(out_dir / "suite.md", header, rows)
    return 1 if failed else 0


def _row(part: Part, status: str, seconds: float | None = None) -> dict[str, object]:
    return {"part": part.name, "status": status,
            "seconds": "" if seconds is None else f"{seconds:.0f}",
            "estimate (s)": part.estimate_s, "results": f"`{part.precision}/`",
            "measures": part.measures}


def _write_log(path: Path, header: str, rows: dict[str, dict[str, object]]) -> None:
    text = header + markdown_table(COLUMNS, list(rows.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
