"""Pairwise losses, forward + backward: valfusion's vectorised forms vs a straightforward reference.

The reference is what one writes first: the explicit ``B x B`` similarity / squared-distance
matrix, then a Python loop over anchors that picks each anchor's negatives (semi-hard:
those not closer than its positive) and accumulates its term. Both sides get the same
inputs and are checked to agree before anything is timed; the table reports the ratio
reference / valfusion measured in the same run: the two are timed alternately over a few
rounds and the table gives the median time of each and the median of the per-round ratios,
so a burst of load from other jobs on a shared machine hits one round, not one side.

    python -m benchmarks losses [--device cuda] [--dtype bf16] [--tiny]
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import Tensor

from valfusion.losses import batch_classification_loss, bidirectional_triplet_loss

from ._harness import (
    DTYPES,
    BenchArgs,
    environment_header,
    markdown_table,
    time_fn,
    write_result,
)

TEMPERATURE = 0.1
MARGIN = 0.2
DIM = 512
# The case, the speed-up, then the times it comes from.
COLUMNS = ("form", "B", "D", "speed-up (x)", "valfusion (ms)", "reference (ms)")


def _unit(x: Tensor) -> Tensor:
    x = x.float()
    return x / x.norm(dim=1, keepdim=True)


def reference_softmax(query: Tensor, target: Tensor) -> Tensor:
    """Explicit logits matrix, then one log-sum-exp per query in a Python loop."""
    q, t = _unit(query), _unit(target)
    logits = q @ t.T / TEMPERATURE
    total = logits.new_zeros(())
    for i in range(q.shape[0]):
        total = total + torch.logsumexp(logits[i], dim=0) - logits[i, i]
    return total / q.shape[0]


def reference_triplet(a: Tensor, b: Tensor, semi_hard: bool = True) -> Tensor:
    """Explicit squared-distance matrix per direction, then per-anchor negative selection."""
    a, b = _unit(a), _unit(b)
    n = a.shape[0]
    total = a.new_zeros(())
    for anchors, others in ((a, b), (b, a)):
        dist = (
            anchors.pow(2).sum(1)[:, None] + others.pow(2).sum(1)[None, :] - 2 * anchors @ others.T
        ).clamp_min(0)
        for i in range(n):
            row = dist[i]
            negatives = torch.cat([row[:i], row[i + 1 :]])
            if semi_hard:
                negatives = negatives[negatives >= row[i]]
            if negatives.numel() > 0:
                total = total + torch.clamp(MARGIN + row[i] - negatives.min(), min=0)
    return total / n


CASES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "softmax": (
        reference_softmax,
        lambda q, t: batch_classification_loss(q, t, TEMPERATURE),
    ),
    "triplet (semi-hard)": (
        reference_triplet,
        lambda a, b: bidirectional_triplet_loss(a, b, MARGIN, semi_hard=True),
    ),
    "triplet (hardest)": (
        lambda a, b: reference_triplet(a, b, semi_hard=False),
        lambda a, b: bidirectional_triplet_loss(a, b, MARGIN, semi_hard=False),
    ),
}


def _forward_backward(fn: Callable[[Tensor, Tensor], Tensor], q: Tensor, t: Tensor) -> Callable[[], None]:
    def step() -> None:
        q.grad = None
        t.grad = None
        fn(q, t).backward()

    return step


def run(args: BenchArgs) -> None:
    """Time both forms (forward + backward) against the reference; write ``losses.md``."""
    if torch.device(args.device).type != "cpu":
        _run(args)
        return
    # One intra-op thread on CPU: the reference is thousands of tiny ops, and on a shared,
    # oversubscribed machine OpenMP threads spin-waiting on a descheduled peer inflate
    # such timings by orders of magnitude, drowning the comparison in noise.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: BenchArgs) -> None:
    dtype = DTYPES[args.dtype]
    batch_sizes = (8, 16) if args.tiny else (32, 64, 128, 256, 512, 1024)
    rounds = 1 if args.tiny else 3
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in batch_sizes:
        q = torch.randn(batch, DIM, generator=generator).to(args.device, dtype).requires_grad_()
        t = torch.randn(batch, DIM, generator=generator).to(args.device, dtype).requires_grad_()
        for name, (reference, ours) in CASES.items():
            # Same value before timing: a fast wrong answer is not a speed-up.
            torch.testing.assert_close(ours(q, t), reference(q, t), rtol=1e-4, atol=1e-5)
            ref_s, ours_s = [], []
            for _ in range(rounds):
                ref_s.append(time_fn(_forward_backward(reference, q, t), args.min_run_time))
                ours_s.append(time_fn(_forward_backward(ours, q, t), args.min_run_time))
            ratio = statistics.median(r / o for r, o in zip(ref_s, ours_s))
            rows.append(
                (
                    name,
                    batch,
                    DIM,
                    ratio,
                    statistics.median(ours_s) * 1e3,
                    statistics.median(ref_s) * 1e3,
                )
            )

    text = environment_header("Pairwise losses: forward + backward", device=args.device)
    text += (
        f"\nInputs `(B, {DIM})` in {args.dtype}, losses computed in fp32. Reference: explicit "
        "B x B matrix plus a Python loop over anchors selecting negatives "
        "(`benchmarks/bench_losses.py`). Each side: median over "
        f"{rounds} alternating round(s) of the `torch.utils.benchmark` blocked_autorange median "
        f"(min_run_time={args.min_run_time} s); speed-up: median of the per-round ratios "
        "reference / valfusion. On CPU one intra-op thread is used (see the module docstring).\n\n"
    )
    text += markdown_table(COLUMNS, rows)
    write_result("losses.md", text, args)
