"""Smoke tests of the composite-transformer benchmark (no timing asserted) and of its FLOP count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._harness import BenchArgs
from benchmarks.bench_composite import (
    composite_flops,
    preservation_flops,
    run,
    self_attention_flops,
)
from valfusion.layers import CompositeTransformer, use_backend


def test_composite_benchmark_runs_at_tiny_sizes_and_prints_its_tables(capsys):
    run(BenchArgs(tiny=True, write=False, min_run_time=0.01))
    out = capsys.readouterr().out
    for row in ("| fwd+bwd | low |", "| fwd | high |", "| fwd+bwd | sum of 3 levels |",
                "| fwd+bwd | high-res |", "| self-attention | mid |", "| preservation | low |",
                "| valfusion | ", "| 144 | 12 x 12 |", "| 16 x 8 x 8 | 2 |",
                "| level | bound from the two kernels, % ceil |",
                "| level | speed-up (best / best) |"):
        assert row in out, row
    assert "## Targets\n" in out


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(("channels", "side"), [(8, 4), (16, 3)])
def test_composite_flop_formula_matches_the_flop_counter(channels: int, side: int) -> None:
    # FlopCounterMode counts every matmul and convolution of the reference with explicit
    # attention (plain ATen ops; it does not know the fused CPU attention kernel or the
    # fused backend's in-place GEMMs): an independent statement of the layer's useful work.
    batch, text = 3, 5
    layer = CompositeTransformer(channels, text).eval()
    image, words = torch.randn(batch, channels, side, side), torch.randn(batch, text)
    with torch.no_grad(), use_backend("reference"):
        counted = _counted(lambda: layer(image, words, return_attention=True))
    assert counted == batch * composite_flops(channels, side * side, text)


def test_part_flop_formulas_match_the_flop_counter() -> None:
    batch, channels, side = 2, 8, 4
    layer = CompositeTransformer(channels, 5).eval()
    fused, reference = (torch.randn(batch, channels, side, side) for _ in range(2))
    with torch.no_grad():
        attention = _counted(lambda: layer.self_attention(fused, return_weights=True))
        preservation = _counted(lambda: layer.preservation(fused, reference))
    assert attention == batch * self_attention_flops(channels, side * side)
    assert preservation == batch * preservation_flops(channels, side * side)
