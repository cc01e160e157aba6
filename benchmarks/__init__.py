"""valfusion micro-benchmarks (not part of the installed package).

Run ``python -m benchmarks`` (or ``valfusion bench`` from a source checkout). Each module
``bench_<name>.py`` exposes ``run(args: BenchArgs) -> None`` and writes Markdown tables
to ``benchmarks/results/``.
"""

BENCHMARKS = ("composite", "losses", "recall", "train_step")
