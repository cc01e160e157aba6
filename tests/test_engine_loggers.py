"""Logs of a training run: the metrics log (CSV, TensorBoard), the ``valfusion`` logger, live output.

A run with a run directory writes ``RUN_DIR/logs`` as it trains: each row of its history
(loss, learning rate, throughput, each evaluation's Recall@K) with its step, on disk at
once; a resumed run's log equals its history (no rows of the interrupted run past the
checkpoint, no step twice). Status messages are records of the ``valfusion`` logger, which
the library leaves to the application and the command shows on stderr. Names added by this
behaviour are imported inside the tests, so that each test fails on its own where the
behaviour is missing.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from valfusion.cli import build_parser, main
from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.engine import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"backbone_channels": (4, 8, 8), "image_size": 32, "word_dim": 8, "text_hidden_dim": 8, "text_dim": 8}
TINY_CLI = [
    "--data", "synthetic", "-o", "num_train=64", "-o", "num_test=16", "--image-size", "32",
    "--channels", "4,8,8", "--word-dim", "8", "--text-hidden-dim", "8", "--text-dim", "8",
    "--batch-size", "8", "--device", "cpu",
]
TRAIN_KEYS = ("loss", "lr", "samples_per_second")
# TensorBoard stores scalars as float32: a value comes back within half a unit in the
# last place of 24 significant bits.
FLOAT32_REL = 2.0**-24


@pytest.fixture(scope="module")
def data():
    return SyntheticBenchmark(num_train=64, num_test=16, seed=3, image_size=32).data()


def tiny_config(**overrides) -> TrainConfig:
    options = {
        "steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "device": "cpu", "log_every": 2,
        "eval_every": 4, "checkpoint_every": 4, "model": dict(TINY_MODEL),
    }
    options.update(overrides)
    return TrainConfig(**options)


def read_log(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_csv(run_dir: Path) -> list[dict[str, str]]:
    return read_log(run_dir / "logs")


def expected_rows(history: dict) -> list[tuple[int, dict[str, float]]]:
    """The history as log rows, in the order the run records them (training before evaluation at a step)."""
    rows = [(e["step"], 0, {f"train/{k}": e[k] for k in TRAIN_KEYS}) for e in history["train"]]
    rows += [(e["step"], 1, {f"eval/{k}": v for k, v in e.items() if k != "step"}) for e in history["eval"]]
    return [(step, values) for step, _, values in sorted(rows, key=lambda row: row[:2])]


def csv_rows(rows: list[dict[str, str]]) -> list[tuple[int, dict[str, float]]]:
    return [(int(r["step"]), {k: float(v) for k, v in r.items() if k != "step" and v != ""}) for r in rows]


def damage_newest_checkpoint(run_dir: Path, step: int) -> None:
    """Truncate the newest checkpoint: resuming falls back to the one before, as after a kill."""
    path = run_dir / "checkpoints" / f"step_{step:07d}.pt"
    path.write_bytes(path.read_bytes()[:100])


# ---------------------------------------------------------------------------- the CSV log


def test_csv_log_holds_every_history_row_with_its_step(data, tmp_path):
    result = train(data, tiny_config(), tmp_path, progress=False)
    rows = read_csv(tmp_path)
    assert list(rows[0]) == ["step", *(f"train/{k}" for k in TRAIN_KEYS), "eval/recall@1", "eval/recall@10", "eval/recall@50"]
    # Floats are written as Python prints them, which reads back to the same float.
    assert csv_rows(rows) == expected_rows(result.history)
    assert [int(r["step"]) for r in rows if r["eval/recall@1"]] == [4, 8, 12]


def test_each_csv_row_is_on_disk_before_the_next_call(tmp_path):
    from valfusion.engine import CSVLogger

    log = CSVLogger(tmp_path)
    log.log_metrics(1, {"train/loss": 2.5})
    log.log_metrics(2, {"train/loss": 1.5})
    # Read through another handle while the logger is still open: nothing waits in a buffer.
    assert csv_rows(read_log(tmp_path)) == [(1, {"train/loss": 2.5}), (2, {"train/loss": 1.5})]
    log.close()


def test_a_new_metric_adds_a_column_and_keeps_the_earlier_rows(tmp_path):
    from valfusion.engine import CSVLogger

    log = CSVLogger(tmp_path)
    log.log_metrics(2, {"train/loss": 3.0})
    log.log_metrics(4, {"eval/recall@1": 0.25})
    log.log_metrics(6, {"train/loss": 2.0})
    log.close()
    rows = read_log(tmp_path)
    assert list(rows[0]) == ["step", "train/loss", "eval/recall@1"]
    assert [(r["step"], r["train/loss"], r["eval/recall@1"]) for r in rows] == [
        ("2", "3.0", ""), ("4", "", "0.25"), ("6", "2.0", "")
    ]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("step", "metrics", "match"),
    [(-1, {"a": 1.0}, "step"), (1.5, {"a": 1.0}, "step"), (1, {"step": 1.0}, "metrics"), (1, {"a": "high"}, "metrics")],
)
def test_bad_log_calls_are_refused_naming_the_argument(tmp_path, step, metrics, match):
    from valfusion.engine import CSVLogger

    log = CSVLogger(tmp_path)
    with pytest.raises(ValueError, match=match):
        log.log_metrics(step, metrics)
    log.close()


def test_a_resumed_run_drops_the_rows_logged_after_its_checkpoint(data, tmp_path):
    straight = train(data, tiny_config(), tmp_path / "straight", progress=False)
    train(data, tiny_config(), tmp_path / "cut", until=8, progress=False)
    before = [int(r["step"]) for r in read_csv(tmp_path / "cut")]
    assert max(before) == 8  # the interrupted run logged steps 5..8 after its checkpoint at 4
    damage_newest_checkpoint(tmp_path / "cut", 8)
    resumed = train(data, tiny_config(), tmp_path / "cut", resume=True, progress=False)
    rows = csv_rows(read_csv(tmp_path / "cut"))
    assert rows == expected_rows(resumed.history)
    train_steps = [step for step, values in rows if "train/loss" in values]
    eval_steps = [step for step, values in rows if "eval/recall@1" in values]
    assert train_steps == [2, 4, 6, 8, 10, 12] and eval_steps == [4, 8, 12]
    # Exact resume: the resumed run's losses are the uninterrupted run's.
    assert [e["loss"] for e in resumed.history["train"]] == [e["loss"] for e in straight.history["train"]]


def test_the_logger_may_change_on_resume_and_the_new_log_holds_the_whole_run(data, tmp_path):
    train(data, tiny_config(logger="none"), tmp_path, until=4, progress=False)
    assert not (tmp_path / "logs").exists()
    resumed = train(data, tiny_config(logger="csv"), tmp_path, resume=True, progress=False)
    assert csv_rows(read_csv(tmp_path)) == expected_rows(resumed.history)
    assert csv_rows(read_csv(tmp_path))[0][0] == 2


def test_logger_none_and_no_run_directory_write_no_log(data, tmp_path):
    from valfusion.engine import open_logger

    train(data, tiny_config(steps=4, logger="none"), tmp_path, progress=False)
    assert not (tmp_path / "logs").exists()
    assert open_logger("none", tmp_path / "elsewhere") is None


def test_train_command_offers_exactly_the_configs_loggers():
    from valfusion.engine import LOGGERS

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"].populated()
    (action,) = [a for a in train_parser._actions if "--logger" in a.option_strings]
    assert tuple(action.choices) == LOGGERS
    assert TrainConfig().logger == "csv"


# ---------------------------------------------------------------------------- TensorBoard


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _expected_scalars(history: dict) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, values in expected_rows(history):
        for name, value in values.items():
            series.setdefault(name, []).append((step, value))
    return series


def _assert_same_series(got, expected) -> None:
    assert sorted(got) == sorted(expected)
    for tag in expected:
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in expected[tag]], rel=FLOAT32_REL, abs=0), tag


def test_tensorboard_events_read_back_as_the_history(data, tmp_path):
    result = train(data, tiny_config(logger="tensorboard"), tmp_path, progress=False)
    _assert_same_series(_scalars(tmp_path / "logs"), _expected_scalars(result.history))


def test_a_resumed_tensorboard_log_shows_each_step_once(data, tmp_path):
    config = tiny_config(logger="tensorboard")
    train(data, config, tmp_path, until=8, progress=False)
    damage_newest_checkpoint(tmp_path, 8)
    resumed = train(data, config, tmp_path, resume=True, progress=False)
    _assert_same_series(_scalars(tmp_path / "logs"), _expected_scalars(resumed.history))


def test_tensorboard_without_its_package_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    # What a machine without the `tensorboard` extra has: `import tensorboard` fails.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    code = main(["train", *TINY_CLI, "--out", str(tmp_path), "--steps", "2", "--logger", "tensorboard", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "valfusion[tensorboard]" in err and err.startswith("valfusion train: error: logger:")
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------- the `valfusion` logger


def test_the_library_gives_its_logger_only_a_null_handler():
    handlers = logging.getLogger("valfusion").handlers
    assert handlers and all(type(h) is logging.NullHandler for h in handlers)


def test_evaluations_are_info_records_and_the_library_prints_nothing(data, tmp_path, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="valfusion"):
        train(data, tiny_config(steps=8), tmp_path, progress=False)
    records = [r for r in caplog.records if r.name == "valfusion.engine.trainer"]
    assert [r.getMessage().split(":")[0] for r in records] == ["step 4", "step 8"]
    assert all(r.levelno == logging.INFO and "R@10" in r.getMessage() for r in records)
    assert capfd.readouterr().err == ""


def test_the_command_shows_the_records_on_stderr_and_writes_the_csv_log(tmp_path, capsys):
    code = main(["train", *TINY_CLI, "--out", str(tmp_path), "--steps", "4", "--eval-every", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line.split(":")[0] for line in captured.err.splitlines()] == ["step 2", "step 4"]
    assert [r["step"] for r in read_csv(tmp_path) if r["eval/recall@1"]] == ["2", "4"]
    assert logging.getLogger("valfusion").level == logging.NOTSET  # the command put it back


def test_a_skipped_checkpoint_is_a_one_line_warning_of_the_command(tmp_path, capsys):
    assert main(["train", *TINY_CLI, "--out", str(tmp_path), "--steps", "4", "--checkpoint-every", "2", "--no-progress"]) == 0
    damage_newest_checkpoint(tmp_path, 4)
    capsys.readouterr()
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("valfusion train: warning: resume: skipped ") and "step_0000004.pt" in warnings[0]


# ---------------------------------------------------------------------------- live output


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_progress_and_the_csv_log_reach_a_pipe_and_the_disk_while_the_run_goes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # 300 steps: the first progress line comes at step 30, with 90% of the run still to go.
    process = subprocess.Popen(
        [sys.executable, "-m", "valfusion", "train", *TINY_CLI, "--out", str(tmp_path), "--steps", "300",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        first = None
        for line in process.stdout:
            if " step " in line:
                first = line
                break
        logged = [int(r["step"]) for r in read_csv(tmp_path)]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stdout.close()
    assert first is not None and first.startswith("train val: step 30/300")
    # Killed by us, so still running when the line and the log rows were read.
    assert process.returncode == -signal.SIGKILL
    assert logged[:3] == [10, 20, 30] and all(step % 10 == 0 for step in logged)
