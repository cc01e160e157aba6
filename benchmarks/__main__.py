"""``python -m benchmarks [NAME ...] [--device cuda] [--dtype bf16] [--tiny]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from benchmarks import BENCHMARKS
from benchmarks._harness import add_common_args, args_from_namespace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    add_common_args(parser)
    ns = parser.parse_args(argv)
    unknown = [n for n in ns.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    args = args_from_namespace(ns)
    for name in ns.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
