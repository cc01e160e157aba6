"""valfusion.engine: training, evaluation, checkpoints and the run directory.

- :class:`TrainConfig`: optimisation, schedule, precision, evaluation and checkpoint settings.
- :class:`Trainer` / :func:`train`: AdamW + warm-up/cosine, gradient clipping, mixed
  precision, DistributedDataParallel under ``torchrun``, exact resume from checkpoints.
- :func:`evaluate`: Recall@K on evaluation splits under their gallery protocol;
  :func:`write_cirr_submission`: CIRR test-server files.
- :class:`RunIdentity`: the data and settings a run trains on, checked on resume;
  :class:`TrainingStopped`: a run stopped by a signal, a non-finite loss or a data error,
  with its state saved.
- :mod:`valfusion.engine.io`: atomic writes for results and checkpoints;
  :mod:`valfusion.engine.loggers`: the metrics log a run writes as it goes (CSV, TensorBoard).
- :mod:`valfusion.engine.demo`: the main job (``valfusion demo``); :mod:`valfusion.engine.plots`:
  learning curves, attention maps and top results (matplotlib, the ``demo`` extra).
"""

from valfusion.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from valfusion.engine.config import AMP_MODES, LOGGERS, TrainConfig
from valfusion.engine.distributed import DistributedContext, init_distributed, resolve_device
from valfusion.engine.evaluation import embed_images, embed_split, evaluate
from valfusion.engine.identity import RunIdentity, annotation_fingerprint
from valfusion.engine.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_torch,
)
from valfusion.engine.loggers import CSVLogger, MetricsLogger, TensorBoardLogger, open_logger
from valfusion.engine.sampler import ResumableSampler
from valfusion.engine.schedule import WarmupCosine, warmup_cosine_scheduler
from valfusion.engine.stopping import StopSignals, TrainingStopped
from valfusion.engine.submission import CIRR_SUBMISSION_SIZES, write_cirr_submission
from valfusion.engine.trainer import (
    CHECKPOINT_DIR,
    HISTORY_FILE,
    IDENTITY_FILE,
    LOG_DIR,
    METRICS_FILE,
    TRAIN_CONFIG_FILE,
    Trainer,
    TrainResult,
    build_model,
    build_trainer,
    build_vocabulary,
    train,
)

__all__ = [
    "AMP_MODES",
    "CHECKPOINT_DIR",
    "CIRR_SUBMISSION_SIZES",
    "HISTORY_FILE",
    "IDENTITY_FILE",
    "LOGGERS",
    "LOG_DIR",
    "METRICS_FILE",
    "TRAIN_CONFIG_FILE",
    "CSVLogger",
    "DistributedContext",
    "MetricsLogger",
    "ResumableSampler",
    "RunIdentity",
    "StopSignals",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingStopped",
    "WarmupCosine",
    "annotation_fingerprint",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_torch",
    "build_model",
    "build_trainer",
    "build_vocabulary",
    "embed_images",
    "embed_split",
    "evaluate",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "open_logger",
    "prune_checkpoints",
    "resolve_device",
    "save_checkpoint",
    "train",
    "warmup_cosine_scheduler",
    "write_cirr_submission",
]
