"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "warmup_cosine_scheduler"]


class WarmupCosine:
    """The learning-rate factor of step ``s`` (multiplies the peak learning rate).

    ``f(s) = (s + 1) / W`` for ``s < W`` (linear warm-up, never 0), then
    ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p = (s - W) / max(1, S - W)`` clipped
    to ``[0, 1]`` (cosine from 1 to ``r``).

    A plain object with numeric attributes, so a ``LambdaLR`` holding it saves and loads
    its state with ``torch.load(weights_only=True)``.

    Args:
        total_steps: ``S``.
        warmup_steps: ``W`` (clipped to ``S``).
        min_ratio: ``r``, the final factor.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> None:
        self.total_steps = total_steps
        self.warmup_steps = min(warmup_steps, total_steps)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(max((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 0.0), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` following :class:`WarmupCosine` (call ``step()`` after each optimiser step).

    Args:
        optimizer: The optimiser whose groups' ``lr`` is the peak learning rate.
        total_steps: Steps of the whole run.
        warmup_steps: Linear warm-up steps.
        min_ratio: Final learning rate as a fraction of the peak.

    Returns:
        The scheduler.
    """
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))
