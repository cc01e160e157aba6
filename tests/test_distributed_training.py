"""Training under torch.distributed for real: two CPU processes, gloo, DistributedDataParallel."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from valfusion.data.source import load_source
from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.engine import TrainConfig, evaluate, train
from valfusion.models import VAL

WORLD = 2
TINY_MODEL = {"backbone_channels": (4, 8, 8), "image_size": 32, "word_dim": 8, "text_hidden_dim": 8, "text_dim": 8}


def _config() -> TrainConfig:
    return TrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, device="cpu", eval_every=3, model=TINY_MODEL)


def _data():
    return SyntheticBenchmark(num_train=64, num_test=16, seed=5, image_size=32).data()


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        result = train(_data(), _config(), Path(out_dir) / "run", progress=False)
        # The test's own record of what each rank ended with (the trainer writes on rank 0 only).
        torch.save(
            {"state": result.model.state_dict(), "metrics": result.metrics},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return tmp


@pytest.mark.distributed
def test_both_ranks_end_with_identical_weights_and_buffers(spawned):
    states = [torch.load(spawned / f"rank{r}.pt", weights_only=True)["state"] for r in range(WORLD)]
    different = [name for name in states[0] if not torch.equal(states[0][name], states[1][name])]
    assert different == []


@pytest.mark.distributed
def test_the_ranks_actually_trained_away_from_the_initialisation(spawned):
    trained = torch.load(spawned / "rank0.pt", weights_only=True)["state"]
    config = _config()
    torch.manual_seed(config.seed)
    from valfusion.engine import build_model

    initial = build_model(_data(), config).state_dict()
    assert any(not torch.equal(initial[n], trained[n]) for n in initial if initial[n].is_floating_point())


@pytest.mark.distributed
def test_only_rank_zero_writes_one_run_directory(spawned):
    run = spawned / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000006.pt"]
    assert (run / "metrics.json").is_file() and (run / "model.safetensors").is_file()
    assert not list(run.rglob("*.tmp"))


@pytest.mark.distributed
def test_sharded_evaluation_agrees_with_one_process_on_the_saved_model(spawned):
    metrics = [torch.load(spawned / f"rank{r}.pt", weights_only=True)["metrics"] for r in range(WORLD)]
    assert metrics[0] == metrics[1]  # every rank reports the whole query set
    single = evaluate(VAL.from_pretrained(spawned / "run"), _data())
    assert metrics[0]["num_queries"] == single["num_queries"] == 16
    for k in (1, 10, 50):
        # Shards are embedded in other batches than one process uses: allow one query's
        # rank to move across a cut-off through float rounding, no more.
        assert abs(metrics[0][f"recall@{k}"] - single[f"recall@{k}"]) <= 1 / 16


@pytest.mark.distributed
def test_torchrun_runs_the_same_train_command_on_two_processes(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        "-m", "valfusion", "train", "--data", "synthetic",
        "-o", "num_train=64", "-o", "num_test=16", "--image-size", "32", "--channels", "4,8,8",
        "--word-dim", "8", "--text-hidden-dim", "8", "--text-dim", "8",
        "--steps", "4", "--batch-size", "8", "--device", "cpu", "--out", str(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("protocol: synthetic") == 1  # rank 0 alone prints the table
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_queries"] == 16 and 0 <= metrics["recall@10"] <= 1
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_0000004.pt"]
    saved = TrainConfig.from_dict(json.loads((run_dir / "train_config.json").read_text()))
    assert saved.steps == 4 and saved.batch_size == 8
    # The whole test split was loaded the same way the command did.
    data = load_source("synthetic", num_train=64, num_test=16, image_size=32, splits=("test",))
    assert metrics["gallery_size"] == len(data.test.gallery)
