"""One end-to-end training step of the reference VAL model, per composer, vs the references.

``python -m benchmarks train_step [--device cuda] [--dtype bf16] [--tiny]`` writes
``train_step.md``.

The model is :class:`valfusion.models.VAL` with the small pyramid (``backbone="small"``,
levels of 32 / 64 / 128 channels at 16x16 / 8x8 / 4x4 for 64 px images) and the default
text encoder (300-d words, LSTM 1024, text feature 512), one model per composer name in
:data:`valfusion.layers.COMPOSERS`. A step is what the trainer does: ``zero_grad``,
``compute_loss(reference, tokens, lengths, target).total`` (softmax batch classification
at every level), ``backward``, ``clip_grad_norm_(1.0)``, an AdamW step; batch 32, texts
of 12 tokens (lengths 4..12).

Beside ``"val"`` and ``"val_official"``: the same model (same weights) with every level's
composer replaced by reference 1 (official-graph structure) and reference 2
(``nn.MultiheadAttention`` port) from :mod:`benchmarks.references`, checked to give the
same query embeddings in evaluation mode before timing. The ratio is the whole-step
speed-up; the composers are a small part of this small model's step, so expect ratios near
one (the composite benchmark isolates the block).

FLOPs: counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one step of a copy
of each valfusion model whose composite transformers take their explicit attention path
(plain ATen matmuls and convolutions, which the counter knows; it does not know the fused
CPU attention kernel or the in-place GEMMs of the fast path, which do the same useful
work), forward and backward; the references are credited with valfusion's count. The fraction of
the ceiling divides the achieved FLOP/s by the best rate of a ``2048^3`` product timed in the
same rounds, as a ``torch.mm`` and as a 1x1 convolution (``_harness.ceiling_products``).
Timing as in ``bench_composite``: alternating rounds, medians, one intra-op thread and
process CPU time by default on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from valfusion.layers import COMPOSERS, CompositeTransformer
from valfusion.models import VAL, VALConfig

from ._harness import (
    DTYPES,
    BenchArgs,
    ceiling_gemm_size,
    ceiling_products,
    environment_header,
    interleaved_rounds,
    make_clock,
    markdown_table,
    median_ratio,
    num_threads,
    resolve_threads,
    write_result,
)
from .references import MultiheadAttentionPortComposite, OfficialGraphComposite

OURS, REF1, REF2 = "valfusion", "ref 1 (official graph)", "ref 2 (MHA port)"
CEILING = "GEMM ceiling"
VOCAB = 1000
WITH_REFERENCES = ("val", "val_official")
# The composer, its comparisons (ratios to the references, fraction of the ceiling), then
# the figures they come from.
COLUMNS = (
    "composer", "ref 1 / ours", "ref 2 / ours", "% ceiling", "samples/s", f"{OURS} (ms)",
    f"{REF1} (ms)", f"{REF2} (ms)", "GFLOP/step",
)


def _config(name: str, tiny: bool) -> VALConfig:
    if tiny:
        return VALConfig(
            vocab_size=VOCAB, composer=name, backbone_channels=(8, 16, 32), image_size=32,
            word_dim=16, text_hidden_dim=32, text_dim=32,
        )
    return VALConfig(vocab_size=VOCAB, composer=name)


def _batch(config: VALConfig, batch: int, steps: int, device: str) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    size = (batch, 3, config.image_size, config.image_size)
    reference = torch.randn(size, generator=generator)
    target = torch.randn(size, generator=generator)
    tokens = torch.randint(1, VOCAB, (batch, steps), generator=generator)
    lengths = torch.randint(min(4, steps), steps + 1, (batch,), generator=generator)
    return tuple(t.to(device) for t in (reference, tokens, lengths, target))


def _with_references(model: VAL, reference: type[nn.Module]) -> VAL:
    """A copy of ``model`` whose composer levels are ``reference.from_layer(level)``."""
    other = copy.deepcopy(model)
    levels = other.composer.levels
    for i, level in enumerate(levels):
        levels[i] = reference.from_layer(level)
    return other


def _step_fn(model: VAL, batch: tuple[Tensor, ...], device: str, dtype: str) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = (
        contextlib.nullcontext
        if dtype == "fp32"
        else lambda: torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model.compute_loss(*batch).total
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def _count_flops(model: VAL, batch: tuple[Tensor, ...], device: str, dtype: str) -> float:
    """FLOPs of one training step of ``model``, counted on its explicit-attention twin."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, CompositeTransformer):
            module.self_attention.fused_attn = False
    step = _step_fn(twin, batch, device, dtype)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _check_same_embeddings(ours: VAL, others: dict[str, VAL], batch: tuple[Tensor, ...]) -> None:
    reference, tokens, lengths, _ = batch
    with torch.no_grad():
        expected = ours.eval().compose(reference, tokens, lengths)
        for other in others.values():
            got = other.eval().compose(reference, tokens, lengths)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for m in (ours, *others.values()):
        m.train()


def run(args: BenchArgs) -> None:
    """Time one training step per composer; write ``train_step.md``."""
    threads = resolve_threads(args, cpu_default=1)
    with num_threads(threads):
        _run(args, threads)


def _run(args: BenchArgs, threads: int) -> None:
    batch_size, steps_per_text = (4, 6) if args.tiny else (32, 12)
    rounds = 1 if args.tiny else 3
    gemm_n = ceiling_gemm_size(args)
    clock, clock_name = make_clock(args, threads)
    ceiling = {
        f"{CEILING} ({route})": fn
        for route, fn in ceiling_products(gemm_n, args.device, DTYPES[args.dtype]).items()
    }
    rows = []
    for name in COMPOSERS:
        config = _config(name, args.tiny)
        torch.manual_seed(0)
        model = VAL(config).to(args.device).train()
        batch = _batch(config, batch_size, steps_per_text, args.device)
        others: dict[str, VAL] = {}
        if name in WITH_REFERENCES:
            others = {
                REF1: _with_references(model, OfficialGraphComposite),
                REF2: _with_references(model, MultiheadAttentionPortComposite),
            }
            _check_same_embeddings(model, others, batch)
        steps = {OURS: _step_fn(model, batch, args.device, args.dtype)}
        steps.update({k: _step_fn(m, batch, args.device, args.dtype) for k, m in others.items()})
        flops = _count_flops(model, batch, args.device, args.dtype)
        times = interleaved_rounds({**ceiling, **steps}, rounds, args.min_run_time, timer=clock)
        # The best rate of either route to the ceiling product (see ceiling_products).
        best = max(2.0 * gemm_n**3 / t for name in ceiling for t in times.pop(name))
        ours = times[OURS]
        fraction = statistics.median(flops / t / best for t in ours)
        ratios = {k: f"{median_ratio(times[k], ours):.2f}" for k in others}
        print(f"[train_step] {name}: {statistics.median(ours) * 1e3:.1f} ms")
        rows.append((
            name,
            ratios.get(REF1, "n/a"),
            ratios.get(REF2, "n/a"),
            f"{100 * fraction:.0f}%",
            batch_size / statistics.median(ours),
            statistics.median(ours) * 1e3,
            *(statistics.median(times[k]) * 1e3 if k in times else "n/a" for k in (REF1, REF2)),
            flops / 1e9,
        ))
    text = environment_header("VAL training step, per composer", device=args.device)
    text += (
        f"\nModel: `VAL` with the small pyramid, {_config('val', args.tiny).image_size} px "
        f"images, batch {batch_size}, texts of {steps_per_text} tokens; step = zero_grad, "
        "compute_loss (softmax at every level), backward, clip_grad_norm_(1.0), AdamW. Timer: "
        f"{clock_name}; {threads} intra-op thread(s); dtype {args.dtype}. Each time: median "
        f"over {rounds} alternating round(s) of the `torch.utils.benchmark` blocked_autorange "
        f"median (min_run_time={args.min_run_time} s); ratios: median of per-round ratios. "
        "GFLOP/step: `FlopCounterMode` on one step of an explicit-attention twin of the "
        "valfusion model (forward + backward matmuls, convolutions, attention: the same useful "
        f"work); % ceiling: against the best rate of a {gemm_n}^3 "
        "product timed in the same rounds as `torch.mm` and as a 1x1 `F.conv2d`. References: every level's composer replaced by "
        "`benchmarks/references.py` (same weights).\n\n"
    )
    text += markdown_table(COLUMNS, rows)
    write_result("train_step.md", text, args)
