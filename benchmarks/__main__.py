"""Run valfusion's micro-benchmarks: ``valfusion bench [NAME ...] [OPTIONS]``.

The same as ``python -m valfusion.benchmarks`` (``python -m benchmarks`` in a source
checkout). ``--suite gpu`` runs the prepared GPU suite instead of named benchmarks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from . import BENCHMARKS
from ._harness import add_common_args, allow_tf32, args_from_namespace
from .suite import SUITE_DEVICES, SUITES, run_suite, suite_parts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    add_common_args(parser)
    parser.add_argument("--suite", choices=sorted(SUITES), default=None,
                        help="run a prepared suite of benchmarks, each part in its own process "
                             "and written when it finishes (gpu: bf16 and fp32 + TF32 on "
                             "--device cuda, estimated at about 8 minutes on an H100); --only "
                             "then names the suite's parts to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    unknown = [n for n in ns.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if ns.suite is not None:
        # The suite chooses each part's benchmark, dtype and TF32 flag, and writes every part.
        given = [*ns.names, *(["--dtype"] if ns.dtype != "fp32" else []),
                 *(["--tf32"] if ns.tf32 else []), *(["--no-write"] if ns.no_write else [])]
        if given:
            parser.error(f"--suite {ns.suite} chooses its own benchmarks and precisions and "
                         f"writes its results; drop {' '.join(given)}")
    ns.device = ns.device or SUITE_DEVICES.get(ns.suite, "cpu")
    error = _device_error(ns.device)
    if ns.suite is not None and error is None:
        try:
            parts = suite_parts(ns.suite, ns.only)
        except ValueError as exc:
            error = str(exc)
    if error is not None:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    if ns.suite is not None:
        return run_suite(ns.suite, parts, ns)
    if ns.tf32:
        allow_tf32(True)
    args = args_from_namespace(ns)
    for name in ns.names or BENCHMARKS:
        module = importlib.import_module(f".bench_{name}", __package__)
        module.run(args)
    return 0


def _device_error(device: str) -> str | None:
    """A one-line reason why ``--device`` cannot run here, or None."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device: expected a torch device such as cpu or cuda, got {device!r}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no CUDA GPU visible"
        return f"--device {device}: CUDA is not available here (torch {torch.__version__}, {build})"
    return None


if __name__ == "__main__":
    sys.exit(main())
