"""valfusion micro-benchmarks, shipped in the wheel as ``valfusion.benchmarks``.

Run ``valfusion bench`` (or ``python -m valfusion.benchmarks``; ``python -m benchmarks`` in a
source checkout, where this folder is ``benchmarks/``). Each module ``bench_<name>.py``
exposes ``run(args: BenchArgs) -> None`` and writes Markdown tables to the results folder
(``benchmarks/results/`` in a checkout, ``./valfusion-bench-results`` from an installed
package, or ``--out-dir``). ``--suite gpu`` runs the prepared GPU suite (:mod:`.suite`).
The modules import each other relatively, so both names run the same code.
"""

BENCHMARKS = ("composite", "losses", "recall", "train_step")
