"""The training loop: AdamW, warm-up + cosine, clipping, mixed precision, DDP, checkpoints, resume.

A run directory (``RUN_DIR``) holds, once training ends, everything needed to use and
reproduce the run::

    RUN_DIR/config.json, model.safetensors, vocabulary.json (LSTM) or text_encoder/
                                                     the model (VAL.save_pretrained; model.pt
                                                     without the safetensors package)
    RUN_DIR/train_config.json                        the TrainConfig
    RUN_DIR/run_identity.json                        the data and settings it trained on
    RUN_DIR/metrics.json                             final Recall@K (and the data it used)
    RUN_DIR/history.json                             training losses and periodic evaluations
    RUN_DIR/checkpoints/step_NNNNNNN.pt              resumable checkpoints (the newest few)
    RUN_DIR/logs/                                    the metrics log (TrainConfig.logger), live

Only rank 0 writes; every file is written atomically, except the metrics log, which grows
as the run goes (:mod:`valfusion.engine.loggers`). A run stopped by SIGINT, SIGTERM, a
non-finite loss or an error while reading its data writes a checkpoint of the state after
its last completed step before it stops (:class:`~valfusion.engine.TrainingStopped`).
Status messages (each evaluation's Recall@K, skipped damaged checkpoints) are records of
the ``valfusion.engine.trainer`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from valfusion.data.datasets import TripletBatch, TripletDataset, collate_triplets
from valfusion.data.split import RetrievalData
from valfusion.encoders import Vocabulary, build_text_encoder
from valfusion.engine.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    gather_rng_states,
    load_latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from valfusion.engine.config import TrainConfig
from valfusion.engine.distributed import init_distributed
from valfusion.engine.evaluation import check_can_tokenize, evaluate
from valfusion.engine.identity import RunIdentity
from valfusion.engine.io import atomic_write_json, remove_stale_temporaries
from valfusion.engine.loggers import MetricsLogger, check_logger, open_logger
from valfusion.engine.progress import Progress
from valfusion.engine.sampler import ResumableSampler
from valfusion.engine.schedule import warmup_cosine_scheduler
from valfusion.engine.stopping import StopSignals, TrainingStopped
from valfusion.models import VAL
from valfusion.models.backbones import build_backbone, initial_weights

__all__ = [
    "CHECKPOINT_DIR",
    "HISTORY_FILE",
    "IDENTITY_FILE",
    "LOG_DIR",
    "METRICS_FILE",
    "TRAIN_CONFIG_FILE",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_trainer",
    "build_vocabulary",
    "train",
]

TRAIN_CONFIG_FILE = "train_config.json"
"""Name of the run's training configuration file inside ``RUN_DIR``."""
IDENTITY_FILE = "run_identity.json"
"""Name of the run's :class:`~valfusion.engine.RunIdentity` file inside ``RUN_DIR``."""
METRICS_FILE = "metrics.json"
"""Name of the run's latest evaluation metrics file inside ``RUN_DIR``."""
HISTORY_FILE = "history.json"
"""Name of the run's loss and evaluation history file inside ``RUN_DIR``."""
CHECKPOINT_DIR = "checkpoints"
"""Name of the folder of periodic checkpoints inside ``RUN_DIR``."""
LOG_DIR = "logs"
"""Name of the folder of the metrics log (``TrainConfig.logger``) inside ``RUN_DIR``."""

logger = logging.getLogger(__name__)


def build_vocabulary(data: RetrievalData, config: TrainConfig) -> Vocabulary:
    """The vocabulary of the training texts (and of the side information when it is used),
    for the ``"lstm"`` text encoder.

    Args:
        data: Data with a training split.
        config: The run's configuration (``model["semantic_dim"]`` decides whether side
            information is encoded too).

    Returns:
        A :class:`~valfusion.encoders.Vocabulary` (deterministic for given data).

    Raises:
        ValueError: If ``data`` has no training split.
    """
    if data.train is None:
        raise ValueError(f"data: {data.name} has no training split (load it with 'train')")
    texts = [t.text for t in data.train.triplets]
    if config.model_config(1).semantic_dim is not None:
        texts += list(data.train.side_info.values())
    return Vocabulary.from_texts(texts)


def build_model(
    data: RetrievalData,
    config: TrainConfig,
    vocabulary: Vocabulary | None = None,
    *,
    backbone_weights: bool = True,
) -> VAL:
    """A freshly initialised :class:`~valfusion.models.VAL` for ``data`` (seeded by ``config.seed``).

    The ``"lstm"`` text encoder reads a vocabulary of the training texts; a transformer
    text encoder is built from its spec (``model["text_encoder"]``), tokenizer included,
    and ``vocab_size`` is its own.

    Args:
        data: Data with a training split (its texts make the LSTM's vocabulary).
        config: The run's configuration (``config.model`` holds the VALConfig options).
        vocabulary: Use this vocabulary instead of building one (LSTM only).
        backbone_weights: Load ``model["backbone_weights"]`` into the backbone; ``False``
            when a checkpoint's weights replace them (resuming).

    Returns:
        The model, on the CPU.

    Raises:
        ValueError: If ``model["backbone_weights"]`` is not ``"imagenet"`` or an
            existing file (checked before anything is built).
    """
    model_config = config.model_config(1)
    backbone = None
    if model_config.backbone_weights is not None:
        # Built here, so that a resumed run does not read (or download) weights it replaces.
        weights = initial_weights(model_config) if backbone_weights else None
        torch.manual_seed(config.seed)
        backbone = build_backbone(model_config, weights)
    if model_config.text_encoder == "lstm":
        vocabulary = vocabulary if vocabulary is not None else build_vocabulary(data, config)
        torch.manual_seed(config.seed)
        return VAL(config.model_config(len(vocabulary)), vocabulary=vocabulary, backbone=backbone)
    torch.manual_seed(config.seed)
    text_encoder = build_text_encoder(
        model_config.text_encoder, model_config.text_dim, **model_config.text_encoder_kwargs
    )
    return VAL(
        config.model_config(text_encoder.vocab_size), backbone=backbone, text_encoder=text_encoder
    )


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` and :func:`train` return.

    Attributes:
        model: The trained model (unwrapped, on the training device).
        step: Steps done.
        finished: Whether the run reached ``config.steps``.
        metrics: The final evaluation (see :func:`~valfusion.engine.evaluate`), or
            ``None`` when the run stopped early.
        history: ``{"train": [{"step", "loss", "lr", "samples_per_second"}, ...],
            "eval": [{"step", "recall@K", ...}, ...]}``.
        run_dir: Where the run was written, or ``None``.
        seconds: Wall-clock seconds spent in :meth:`Trainer.fit`.
    """

    model: VAL
    step: int
    finished: bool
    metrics: dict[str, Any] | None
    history: dict[str, list[dict[str, Any]]]
    run_dir: Path | None
    seconds: float


class _LossForward(nn.Module):
    """``forward`` = ``VAL.compute_loss``, so that DistributedDataParallel sees the loss call."""

    def __init__(self, model: VAL) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        reference: Tensor,
        tokens: Tensor,
        lengths: Tensor,
        target: Tensor,
        side_tokens: Tensor | None = None,
        side_lengths: Tensor | None = None,
    ) -> Tensor:
        return self.model.compute_loss(reference, tokens, lengths, target, side_tokens, side_lengths).total


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices and kernels only: decaying biases, norm scales and gains only shrinks
    # what normalisation already controls.
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


class Trainer:
    """Train a :class:`~valfusion.models.VAL` on the training split of a :class:`RetrievalData`.

    Each step encodes a batch of ``(reference, text, target)`` triplets, computes the
    hierarchical matching loss (the visual-semantic term too when the model has a
    ``semantic_dim`` and the batch's targets have side information), and takes an AdamW
    step under the warm-up + cosine schedule, after clipping the global gradient norm.
    Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``, each process
    reads its shard of every epoch, and the loss scores each process's queries against
    the whole global batch.

    The data order depends only on ``(seed, epoch)`` and the step, and checkpoints hold
    every RNG state, so a run resumed from a checkpoint ends with the same weights as an
    uninterrupted one (on the same hardware, software, thread count and number of
    processes).

    Args:
        model: The model to train (moved to the training device).
        data: Training split (and evaluation splits for periodic / final evaluation).
        config: The run's configuration.
        run_dir: Where to write checkpoints, history, metrics, the metrics log and the
            model (rank 0 only); ``None`` writes nothing.
        progress: Progress on rank 0: ``True`` forces a tqdm bar, ``False`` shows nothing,
            ``None`` draws a bar on a terminal and otherwise prints a line about every
            tenth of the run.
        identity: What the run trains on (recorded in the run directory and every
            checkpoint, and checked on resume); default ``RunIdentity.from_data(data)``.

    Raises:
        ValueError: If the training split is smaller than one global batch, the model
            has no vocabulary, or fp16 is asked for without CUDA.
        ImportError: If ``config.logger`` is ``"tensorboard"`` and the ``tensorboard``
            package is missing.
    """

    def __init__(
        self,
        model: VAL,
        data: RetrievalData,
        config: TrainConfig,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        progress: bool | None = None,
        identity: RunIdentity | None = None,
    ) -> None:
        if data.train is None:
            raise ValueError(f"data: {data.name} has no training split")
        check_can_tokenize(model, "the texts")
        self.data = data
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.context, self.device = init_distributed(config.device)
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp: 'fp16' needs a CUDA device; use 'bf16' on the CPU")
        check_logger(config.logger)
        self.model = model.to(self.device)
        self._loss_forward: nn.Module = _LossForward(model)
        if self.context.enabled:
            # Parameters a step may leave without gradient: the text encoder of the
            # image-only baseline, the side-information heads on a batch without it.
            unused = model.config.composer == "image_only" or model.config.semantic_dim is not None
            self._loss_forward = DistributedDataParallel(
                self._loss_forward,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=unused,
            )
        self.optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr)
        self.scheduler = warmup_cosine_scheduler(
            self.optimizer, config.steps, config.warmup_steps, config.min_lr_ratio
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.sampler = ResumableSampler(
            len(data.train), seed=config.seed, rank=self.context.rank, world_size=self.context.world_size
        )
        self.batches_per_epoch = self.sampler.per_rank // config.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch_size: the training split has {len(data.train)} triplets, fewer than one "
                f"global batch ({config.batch_size} x {self.context.world_size} processes)"
            )
        self.step = 0
        self.history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
        self._window = {"loss": 0.0, "count": 0}
        self.progress = progress
        self._metrics_log: MetricsLogger | None = None
        self.uses_side_info = model.config.semantic_dim is not None
        self.identity = identity if identity is not None else RunIdentity.from_data(data)
        # Where a step that meets a non-finite loss puts the buffers (BatchNorm statistics)
        # back: the forward pass has already updated them.
        self._buffers_before_step = [buffer.detach().clone() for buffer in model.buffers()]

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume (a collective under a process group: RNG states are gathered)."""
        epoch, offset = divmod(self.step, self.batches_per_epoch)
        state: dict[str, Any] = {
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": gather_rng_states(self.context.world_size),
            "sampler": {
                "seed": self.sampler.seed,
                "epoch": epoch,
                "start": offset * self.config.batch_size,
                "world_size": self.context.world_size,
            },
            "window": dict(self._window),
            "config": self.config.to_dict(),
            "identity": self.identity.to_dict(),
            "model_config": self.model.config.to_dict(),
            "history": self.history,
        }
        if self.model.vocabulary is not None:
            state["vocabulary"] = list(self.model.vocabulary.tokens[2:])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (this process's RNG states included).

        Args:
            state: A checkpoint written from :meth:`state_dict`.

        Raises:
            ValueError: If the checkpoint was written by a run with another training
                configuration or another :class:`~valfusion.engine.RunIdentity` (each
                difference is named, saved value then given value).
        """
        saved = TrainConfig.from_dict(state["config"])
        differences = _config_differences(saved, self.config)
        if state.get("identity") is None:
            warnings.warn(
                "checkpoint: records no run identity (an older valfusion wrote it); the data, "
                "image size and thread count cannot be checked",
                stacklevel=2,
            )
        else:
            saved_identity = RunIdentity.from_dict(state["identity"])
            differences += saved_identity.differences(self.identity)
            # A caller that did not name the source keeps the one the run recorded.
            self.identity = replace(
                self.identity,
                source=self.identity.source if self.identity.source is not None else saved_identity.source,
                data_options=self.identity.data_options
                if self.identity.data_options is not None
                else saved_identity.data_options,
            )
        if differences:
            raise ValueError(
                "resume: the checkpoint was written by a run with other settings (saved vs given): "
                + "; ".join(differences)
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = {key: list(value) for key, value in state["history"].items()}
        self._window = {"loss": float(state["window"]["loss"]), "count": int(state["window"]["count"])}
        rng = state["rng"]
        if len(rng) == self.context.world_size:
            restore_rng_state(rng[self.context.rank])
        else:
            warnings.warn(
                f"checkpoint: written by {len(rng)} processes, resumed on {self.context.world_size}; "
                "the data order and dropout will differ from an uninterrupted run",
                stacklevel=2,
            )

    def save_checkpoint(self) -> Path | None:
        """Write ``RUN_DIR/checkpoints/step_NNNNNNN.pt`` (rank 0; collective under DDP).

        Then deletes all but the ``config.keep_checkpoints`` newest checkpoints.

        Returns:
            The path written (on rank 0 with a run directory), else ``None``.
        """
        self._sync_buffers()
        state = self.state_dict()
        path = None
        if self.run_dir is not None and self.context.is_main:
            folder = self.run_dir / CHECKPOINT_DIR
            path = save_checkpoint(checkpoint_path(folder, self.step), state)
            prune_checkpoints(folder, self.config.keep_checkpoints, up_to=self.step)
        self.context.barrier()
        return path

    def _sync_buffers(self) -> None:
        # DDP broadcasts buffers (BatchNorm statistics) at the start of each forward, so
        # after the last step every process holds its own; rank 0's are the run's.
        if self.context.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    # ------------------------------------------------------------------ training

    def _loader(self, epoch: int, offset: int) -> DataLoader[Any]:
        assert self.data.train is not None
        self.sampler.set_epoch(epoch, start=offset * self.config.batch_size)
        return DataLoader(
            TripletDataset(self.data.train),
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=collate_triplets,
            num_workers=self.config.num_workers,
            # Its own generator: building a loader must not draw from the global RNG,
            # or a resumed run (which builds one mid-epoch) would drift from dropout's stream.
            generator=torch.Generator().manual_seed(self.config.seed + epoch),
            pin_memory=self.device.type == "cuda",
        )

    def _side_tokens(self, batch: TripletBatch) -> tuple[Tensor | None, Tensor | None]:
        if not self.uses_side_info:
            return None, None
        available = torch.tensor(
            [all(s is not None for s in batch.side_info)], dtype=torch.int32, device=self.device
        )
        if self.context.enabled:  # every process must agree, or the loss's gathers would not match
            dist.all_reduce(available, op=dist.ReduceOp.MIN)
        if not bool(available):
            return None, None
        tokens, lengths = self.model.tokenize([s or "" for s in batch.side_info])
        return tokens.to(self.device), lengths.to(self.device)

    def _batches(self) -> Generator[TripletBatch, None, None]:
        """The batches from the current step on, epoch after epoch."""
        epoch, offset = divmod(self.step, self.batches_per_epoch)
        while True:
            yield from self._loader(epoch, offset)
            epoch, offset = epoch + 1, 0

    def _agree(self, *values: int) -> list[int]:
        """The maximum of each value over the processes (a collective under DDP)."""
        if not self.context.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def _train_step(self, batch: TripletBatch) -> float:
        config = self.config
        device = self.device
        reference = batch.reference.to(device, non_blocking=True)
        target = batch.target.to(device, non_blocking=True)
        tokens, lengths = self.model.tokenize(batch.text)
        side_tokens, side_lengths = self._side_tokens(batch)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
        # The forward pass draws dropout and updates BatchNorm statistics: remember both, so
        # that a non-finite loss leaves the state exactly as the last completed step left it.
        rng = capture_rng_state()
        with torch.no_grad():
            for kept, buffer in zip(self._buffers_before_step, self.model.buffers()):
                kept.copy_(buffer)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            total = self._loss_forward(
                reference, tokens.to(device), lengths.to(device), target, side_tokens, side_lengths
            )
        loss = float(total.detach())
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        clipped = None
        if config.grad_clip > 0:
            clipped = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        # Before the optimiser step, so that the weights are still those of the last step.
        # (With fp16 the gradient scaler skips the steps whose gradients overflow, by design.)
        if self.scaler is None:
            norm = float(clipped if clipped is not None else _gradient_norm(self.model))
            if self._agree(int(not (math.isfinite(loss) and math.isfinite(norm))))[0]:
                restore_rng_state(rng)
                with torch.no_grad():
                    for kept, buffer in zip(self._buffers_before_step, self.model.buffers()):
                        buffer.copy_(kept)
                self.optimizer.zero_grad(set_to_none=True)
                raise _NonFinite(loss, norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return loss

    def evaluate(self) -> dict[str, Any]:
        """Recall@K on the data's evaluation splits (every process takes part under DDP)."""
        self._sync_buffers()
        return evaluate(
            self.model,
            self.data,
            ks=self.config.ks,
            batch_size=self.config.eval_batch_size,
            num_workers=self.config.num_workers,
        )

    def fit(self, until: int | None = None) -> TrainResult:
        """Train from the current step to ``until`` (default: ``config.steps``).

        Writes a checkpoint every ``checkpoint_every`` steps and when it returns;
        evaluates every ``eval_every`` steps; at the last step of the run evaluates and
        writes the model, ``metrics.json`` and ``history.json``. Temporary files that a
        killed process left in the run directory are removed first. The metrics log
        (``config.logger``, in ``RUN_DIR/logs``) is opened afresh with the history held so
        far (what the checkpoint of a resumed run recorded), then gets each new row of
        the history as it is recorded.

        While it trains, SIGINT and SIGTERM ask for a stop (see
        :class:`~valfusion.engine.stopping.StopSignals`): at the next step boundary, and
        otherwise when a step's loss is not finite (before the optimiser step) or reading
        a batch fails, it writes a checkpoint of the state after the last completed step
        and raises :class:`~valfusion.engine.TrainingStopped`. A signal during a periodic
        evaluation is acted on when that evaluation ends; the final evaluation runs
        after the final checkpoint, with the previous signal handlers back.

        Args:
            until: Stop after this step (to split a run into several jobs).

        Returns:
            A :class:`TrainResult`.

        Raises:
            TrainingStopped: Stopped by a signal, a non-finite loss or a data error; the
                state was saved and the run resumes from it.
        """
        config = self.config
        until = config.steps if until is None else min(until, config.steps)
        started = time.perf_counter()
        main = self.context.is_main
        progress = Progress(
            config.steps,
            initial=self.step,
            desc=f"train {self.model.config.composer}",
            enabled=main and self.progress is not False,
            bar=self.progress if self.progress is not None else None,
        )
        if self.run_dir is not None and main:
            remove_stale_temporaries(self.run_dir)
            remove_stale_temporaries(self.run_dir / CHECKPOINT_DIR)
            remove_stale_temporaries(self.run_dir / LOG_DIR)
            atomic_write_json(self.run_dir / TRAIN_CONFIG_FILE, config.to_dict())
            atomic_write_json(self.run_dir / IDENTITY_FILE, self.identity.to_dict())
        self._loss_forward.train()
        metrics = None
        try:
            if self.run_dir is not None and main:
                self._metrics_log = open_logger(config.logger, self.run_dir / LOG_DIR)
                for part, entry in _history_rows(self.history):
                    self._log_metrics(part, entry)
            with StopSignals() as signals:
                with _deterministic(config.deterministic):
                    self._train_until(until, signals, progress)
                self.save_checkpoint()
                stop_signal = self._agree(signals.received or 0)[0]
                if stop_signal:  # it came during the last step: skip the final evaluation
                    raise self._stopped("signal", f"stopped by {signal.Signals(stop_signal).name}", stop_signal)
            if self.step >= config.steps:
                metrics = self.evaluate()
                self._record_eval(metrics)
                metrics = {**metrics, "step": self.step, "composer": self.model.config.composer}
                self._write_results(metrics)
        finally:
            progress.close()
            if self._metrics_log is not None:
                self._metrics_log.close()
                self._metrics_log = None
        return TrainResult(
            model=self.model,
            step=self.step,
            finished=self.step >= config.steps,
            metrics=metrics,
            history=self.history,
            run_dir=self.run_dir,
            seconds=time.perf_counter() - started,
        )

    def _train_until(self, until: int, signals: StopSignals, progress: Progress) -> None:
        config = self.config
        window_start, window_steps = time.perf_counter(), 0
        batches = self._batches()
        try:
            while self.step < until:
                # A step boundary: the state is that of the last completed step.
                batch, failure = None, None
                try:
                    batch = next(batches)
                except Exception as error:  # reading images, a custom loader, a worker
                    failure = error
                failed, stop_signal = self._agree(int(failure is not None), signals.received or 0)
                if failed:
                    self.save_checkpoint()
                    detail = "another process failed to read its batch" if failure is None else _one_line(failure)
                    raise self._stopped(
                        "data error", f"reading the batch of step {self.step + 1} failed: {detail}"
                    ) from failure
                if stop_signal:
                    self.save_checkpoint()
                    raise self._stopped("signal", f"stopped by {signal.Signals(stop_signal).name}", stop_signal)
                assert batch is not None
                try:
                    loss = self._train_step(batch)
                except _NonFinite as error:
                    self.save_checkpoint()
                    raise self._stopped(
                        "non-finite loss",
                        f"{error} at step {self.step + 1}, before the optimiser step; "
                        f"lower lr (now {config.lr}) or keep grad_clip on (now {config.grad_clip})",
                    ) from None
                lr = self.scheduler.get_last_lr()[0]
                self.step += 1
                window_steps += 1
                self._window["loss"] += loss
                self._window["count"] += 1
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                throughput = window_steps * config.batch_size * self.context.world_size / elapsed
                if self.step % config.log_every == 0 or self.step == until:
                    mean = self._window["loss"] / max(self._window["count"], 1)
                    entry = {"step": self.step, "loss": mean, "lr": lr, "samples_per_second": throughput}
                    self.history["train"].append(entry)
                    self._log_metrics("train", entry)
                    self._window = {"loss": 0.0, "count": 0}
                    window_start, window_steps = time.perf_counter(), 0
                progress.update(self.step, loss=loss, samples_per_second=throughput)
                if config.eval_every and self.step % config.eval_every == 0 and self.step < config.steps:
                    self._record_eval(self.evaluate())
                if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < until:
                    self.save_checkpoint()
        finally:
            batches.close()

    def _stopped(self, reason: str, what: str, stop_signal: int | None = None) -> TrainingStopped:
        """The exception for a stop after :meth:`save_checkpoint` saved the current step."""
        path = None if self.run_dir is None else checkpoint_path(self.run_dir / CHECKPOINT_DIR, self.step)
        where = "is kept in the trainer (no run directory)" if path is None else f"is saved in {path}"
        return TrainingStopped(
            f"{what}; the state after step {self.step} {where}",
            reason=reason,
            step=self.step,
            checkpoint=path,
            signal=stop_signal,
        )

    def _record_eval(self, metrics: dict[str, Any]) -> None:
        entry = {"step": self.step, **{k: v for k, v in metrics.items() if k.startswith("recall@")}}
        self.history["eval"].append(entry)
        self._log_metrics("eval", entry)
        if self.context.is_main:
            shown = "  ".join(f"R@{k[7:]} {100 * v:.1f}" for k, v in entry.items() if k.startswith("recall@"))
            logger.info("step %d: %s  (%s protocol)", self.step, shown, metrics["protocol"])
        if self.run_dir is not None and self.context.is_main:
            atomic_write_json(self.run_dir / HISTORY_FILE, self.history)

    def _log_metrics(self, part: str, entry: dict[str, Any]) -> None:
        """One history row to the metrics log, named ``part/key`` (``train/loss``, ``eval/recall@1``)."""
        if self._metrics_log is not None:
            values = {f"{part}/{key}": value for key, value in entry.items() if key != "step"}
            self._metrics_log.log_metrics(entry["step"], values)

    def _write_results(self, metrics: dict[str, Any]) -> None:
        if self.run_dir is not None and self.context.is_main:
            self.model.save_pretrained(self.run_dir)
            atomic_write_json(self.run_dir / HISTORY_FILE, self.history)
            atomic_write_json(self.run_dir / METRICS_FILE, metrics)
        self.context.barrier()


class _NonFinite(Exception):
    def __init__(self, loss: float, norm: float) -> None:
        if not math.isfinite(loss):
            what = f"the loss became {loss}"
        elif not math.isfinite(norm):
            what = f"the gradient norm became {norm}"
        else:
            what = "the loss or the gradients became non-finite on another process"
        super().__init__(what)


def _history_rows(history: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The history's rows in the order the run recorded them: by step, training before evaluation."""
    rows = [(entry["step"], order, part, entry)
            for order, part in enumerate(("train", "eval")) for entry in history[part]]
    rows.sort(key=lambda row: row[:2])
    return [(part, entry) for _, _, part, entry in rows]


def _gradient_norm(model: nn.Module) -> Tensor:
    """The global L2 norm of the gradients (what clip_grad_norm_ computes)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _one_line(error: BaseException) -> str:
    text = str(error)
    # DataLoader workers re-raise with the worker's traceback in the message; its last
    # line is the original error.
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1]
    text = " ".join(text.split())
    return text if isinstance(error, ValueError | OSError) and text else f"{type(error).__name__}: {text}"


_UNTRAINED_FIELDS = (
    "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "logger", "num_workers", "device",
    "eval_batch_size", "ks",
)


def _training_fields(config: TrainConfig) -> dict[str, Any]:
    """The fields that change the trained weights (the others may differ on resume)."""
    return {k: v for k, v in config.to_dict().items() if k not in _UNTRAINED_FIELDS}


def _config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    a, b = _training_fields(saved), _training_fields(given)
    return [f"{k}: saved {a[k]!r}, given {b[k]!r}" for k in a if a[k] != b[k]]


def build_trainer(
    data: RetrievalData,
    config: TrainConfig,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    progress: bool | None = None,
    identity: RunIdentity | None = None,
) -> Trainer:
    """Build the model and the :class:`Trainer` of a run, checked and ready to :meth:`~Trainer.fit`.

    Everything :func:`train` does before the first step: every check of the
    configuration, the data and (with ``resume=True``) the checkpoint happens here, so a
    caller can tell a refused run from a failure during training.

    Args:
        data: Training and evaluation splits.
        config: The run's configuration.
        run_dir: The run directory (see the module docstring), or ``None``.
        resume: Continue from the newest intact checkpoint in ``run_dir/checkpoints``
            (damaged newer files are skipped, each named in a warning of the
            ``valfusion.engine.trainer`` logger). Its model
            configuration and vocabulary are used; the training configuration and the
            run identity must match it.
        progress: As for :class:`Trainer`.
        identity: What the run trains on, as for :class:`Trainer`; pass
            ``RunIdentity.from_data(data, source=..., data_options=...)`` to record (and
            check on resume) the source and its loader options too.

    Returns:
        The trainer, at step 0 or at the checkpoint's step.

    Raises:
        FileNotFoundError: ``resume=True`` but ``run_dir`` holds no checkpoint.
        ValueError: The data cannot train this configuration (see :class:`Trainer`), or
            ``resume=True`` and no checkpoint loads, or the checkpoint's run had other
            settings or data (every difference is named).
    """
    identity = identity if identity is not None else RunIdentity.from_data(data)
    state = None
    if resume:
        quiet = dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
        found = None
        if run_dir is not None:
            found = load_latest_checkpoint(
                Path(run_dir) / CHECKPOINT_DIR, on_skip=None if quiet else _report_skipped
            )
        if found is None:
            raise FileNotFoundError(f"resume: no checkpoint in {run_dir}/{CHECKPOINT_DIR}")
        state = found[1]
        saved = state.get("vocabulary")
        model = build_model(
            data,
            config,
            None if saved is None else Vocabulary(saved),
            backbone_weights=False,  # the checkpoint's weights replace them
        )
    else:
        model = build_model(data, config)
    trainer = Trainer(model, data, config, run_dir, progress=progress, identity=identity)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer


def train(
    data: RetrievalData,
    config: TrainConfig,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    until: int | None = None,
    progress: bool | None = None,
    identity: RunIdentity | None = None,
) -> TrainResult:
    """Build a model for ``data`` and train it: the whole ``valfusion train`` job.

    The same as ``build_trainer(data, config, run_dir, ...).fit(until=until)``.

    Args:
        data: Training and evaluation splits.
        config: The run's configuration.
        run_dir: The run directory (see the module docstring), or ``None``.
        resume: Continue from the newest intact checkpoint in ``run_dir/checkpoints``
            (see :func:`build_trainer`).
        until: Stop after this step (a checkpoint is written; resume later).
        progress: As for :class:`Trainer`.
        identity: What the run trains on, as for :func:`build_trainer`.

    Returns:
        A :class:`TrainResult`.

    Raises:
        FileNotFoundError: ``resume=True`` but ``run_dir`` holds no checkpoint.
        ValueError: ``resume=True`` and no checkpoint loads, or the checkpoint's run had
            other settings or data (every difference is named).
        TrainingStopped: Stopped by a signal, a non-finite loss or a data error, after
            saving its state (see :meth:`Trainer.fit`).
    """
    trainer = build_trainer(
        data, config, run_dir, resume=resume, progress=progress, identity=identity
    )
    return trainer.fit(until=until)


def _report_skipped(path: Path, reason: str) -> None:
    logger.warning("resume: skipped %s: %s; trying an older checkpoint", path, reason)
