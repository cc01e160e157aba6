"""The training configuration: optimisation, schedule, precision, evaluation, checkpoints."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from valfusion.models import VALConfig

__all__ = ["AMP_MODES", "LOGGERS", "TrainConfig"]

#: Mixed-precision modes: ``"off"`` (float32), ``"bf16"`` (CPU or CUDA autocast),
#: ``"fp16"`` (CUDA autocast with a gradient scaler).
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
"""Mixed-precision modes: ``"off"`` (fp32), ``"bf16"`` (CPU or CUDA autocast), ``"fp16"`` (CUDA only, with a gradient scaler)."""

LOGGERS: tuple[str, ...] = ("none", "csv", "tensorboard")
"""Metrics logs a run can write under ``RUN_DIR/logs``: ``"none"``, ``"csv"`` (``metrics.csv``, standard library only), ``"tensorboard"`` (event files, the ``tensorboard`` extra)."""


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _non_negative_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative finite number, got {value!r}")
    return float(value)


@dataclass
class TrainConfig:
    """How a :class:`~valfusion.engine.Trainer` trains and evaluates (saved as ``train_config.json``).

    The learning rate follows a linear warm-up then a cosine decay:
    ``lr(s) = lr * s / warmup_steps`` for ``s < warmup_steps``, then
    ``lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)`` with ``p`` the fraction of the
    remaining steps done and ``r = min_lr_ratio``.

    Attributes:
        steps: Optimiser steps in the whole run.
        batch_size: Triplets per step **per process** (the global batch is
            ``batch_size * world_size``; the matching loss sees all of it as negatives).
        lr: Peak AdamW learning rate.
        weight_decay: AdamW decoupled weight decay, applied to weight matrices and
            convolution kernels only (not to biases, norms or embeddings' 1-d parameters).
        warmup_steps: Linear warm-up steps (clipped to ``steps``).
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        grad_clip: Maximum global gradient norm; ``0`` disables clipping.
        amp: One of :data:`AMP_MODES`.
        seed: Seed of the model initialisation, the data order and dropout.
        deterministic: Ask PyTorch for deterministic kernels during training
            (``torch.use_deterministic_algorithms``, warning only where none exists).
        eval_every: Evaluate every this many steps (``0``: only at the end).
        checkpoint_every: Write a checkpoint every this many steps (``0``: only at the end;
            a run stopped by a signal, a non-finite loss or a data error writes one too).
        keep_checkpoints: Keep this many of the newest checkpoints, deleting older ones
            after each successful write (``0``: keep every one).
        log_every: Record the loss and throughput in the history every this many steps.
        logger: One of :data:`LOGGERS`: the metrics log written under ``RUN_DIR/logs`` as
            the run goes (the history's rows: loss, learning rate, throughput, each
            evaluation's Recall@K, with their step; see
            :mod:`valfusion.engine.loggers`). Nothing is written without a run directory.
            May change when a run resumes: the log is rewritten from the checkpoint's
            history, so a logger chosen only then still holds the whole run. The default,
            ``"csv"``, needs nothing beyond the standard library and costs one flushed
            line per record.
        num_workers: ``DataLoader`` worker processes for reading images.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.
        eval_batch_size: Images per batch when embedding queries and the gallery.
        ks: Recall@K cut-offs reported.
        model: Options of :class:`~valfusion.models.VALConfig` (everything but
            ``vocab_size``, which comes from the training texts), e.g.
            ``{"composer": "tirg", "loss": "triplet"}``. With ``semantic_dim`` set, the
            targets' side information trains the visual-semantic term.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    amp: str = "off"
    seed: int = 0
    deterministic: bool = True
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    log_every: int = 10
    logger: str = "csv"
    num_workers: int = 0
    device: str = "auto"
    eval_batch_size: int = 256
    ks: tuple[int, ...] = (1, 10, 50)
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive_int(self.steps, "steps")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.eval_batch_size, "eval_batch_size")
        _positive_int(self.log_every, "log_every")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "num_workers"):
            _non_negative_int(getattr(self, name), name)
        if _non_negative_float(self.lr, "lr") == 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        _non_negative_float(self.weight_decay, "weight_decay")
        _non_negative_float(self.grad_clip, "grad_clip")
        if not 0 <= _non_negative_float(self.min_lr_ratio, "min_lr_ratio") <= 1:
            raise ValueError(f"min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio!r}")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger: expected one of {LOGGERS}, got {self.logger!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: expected one of {AMP_MODES}, got {self.amp!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        self.ks = tuple(self.ks)
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks: expected positive integer cut-offs, got {self.ks!r}")
        if not isinstance(self.model, Mapping):
            raise ValueError(f"model: expected a mapping of VALConfig options, got {type(self.model).__name__}")
        # JSON brings sequences back as lists; tuples keep a saved config equal to the original.
        self.model = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}
        if "vocab_size" in self.model:
            raise ValueError("model: 'vocab_size' is set from the training texts; remove it")
        # Fail now, not after loading the data: build a throw-away VALConfig.
        VALConfig(vocab_size=1, **self.model)

    @property
    def composer(self) -> str:
        """The composer this run trains (``model["composer"]``, VALConfig's default otherwise)."""
        return self.model_config(1).composer

    def model_config(self, vocab_size: int) -> VALConfig:
        """The :class:`~valfusion.models.VALConfig` of this run for a vocabulary of ``vocab_size`` ids.

        Args:
            vocab_size: Size of the run's vocabulary.
        """
        return VALConfig(vocab_size=vocab_size, **self.model)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (inverse of :meth:`from_dict`)."""
        data = dataclasses.asdict(self)
        data["ks"] = list(self.ks)
        data["model"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()
        }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild a configuration written by :meth:`to_dict`.

        Args:
            data: The dictionary written by :meth:`to_dict`.

        Raises:
            ValueError: On unknown keys or invalid values.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(data))
