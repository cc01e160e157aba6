"""Smoke test of the training-step benchmark (no timing asserted) and of its reference swap."""

from __future__ import annotations

from benchmarks._harness import BenchArgs
from benchmarks.bench_train_step import _config, _with_references, run
from benchmarks.references import OfficialGraphComposite
from valfusion.layers import COMPOSERS, CompositeTransformer
from valfusion.models import VAL


def test_train_step_benchmark_runs_at_tiny_sizes_for_every_composer(capsys):
    run(BenchArgs(tiny=True, write=False, min_run_time=0.01))
    out = capsys.readouterr().out
    for name in COMPOSERS:
        assert f"| {name} | " in out, name


def test_reference_model_swaps_every_level_and_keeps_the_original() -> None:
    model = VAL(_config("val", tiny=True))
    swapped = _with_references(model, OfficialGraphComposite)
    assert all(isinstance(level, OfficialGraphComposite) for level in swapped.composer.levels)
    assert all(isinstance(level, CompositeTransformer) for level in model.composer.levels)
