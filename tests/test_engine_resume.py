"""Runs keep their identity and survive interruptions.

Resuming checks the data and settings the run was trained on (run identity); a signal, a
non-finite loss or a data error saves the state after the last completed step; damaged
checkpoints are skipped; old checkpoints are rotated; stale temporaries are removed.
Names added by this behaviour are imported inside the tests, so that each test fails on
its own (not the whole module) where the behaviour is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from valfusion.cli import main
from valfusion.data.errors import DataError
from valfusion.data.synthetic import SyntheticBenchmark
from valfusion.data.triplet import Triplet
from valfusion.engine import TrainConfig, latest_checkpoint, load_checkpoint, save_checkpoint, train
from valfusion.engine.sampler import ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"backbone_channels": (4, 8, 8), "image_size": 32, "word_dim": 8, "text_hidden_dim": 8, "text_dim": 8}
BATCH = 8


@pytest.fixture(scope="module")
def data():
    return SyntheticBenchmark(num_train=64, num_test=16, seed=3, image_size=32).data()


def tiny_config(**overrides) -> TrainConfig:
    options = {
        "steps": 12, "batch_size": BATCH, "lr": 3e-3, "warmup_steps": 1, "device": "cpu", "log_every": 4,
        "model": dict(TINY_MODEL),
    }
    options.update(overrides)
    return TrainConfig(**options)


def _same(a, b) -> bool:
    """Exactly equal nested checkpoint content (NaN equal to NaN: the cached-gauss slot)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
            and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        ) if a.is_floating_point() else isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def assert_same_training_state(got: dict, expected: dict) -> None:
    """Two checkpoints hold the same point of the same run: weights, buffers, optimiser, RNG, data position."""
    assert got["step"] == expected["step"]
    for key in ("model", "optimizer", "scheduler", "rng", "sampler"):
        assert _same(got[key], expected[key]), key


def newest_state(run_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))


def first_step_reading(split, image_id: str, seed: int, batch_size: int) -> int:
    """The first step whose batch reads ``image_id``: step s reads positions [s*B, (s+1)*B) of the epoch's order."""
    per_epoch = len(split) // batch_size
    sampler = ResumableSampler(len(split), seed=seed)
    for epoch in range(100):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for b in range(per_epoch):
            triplets = [split.triplets[i] for i in order[b * batch_size:(b + 1) * batch_size]]
            if any(image_id in (t.reference, t.target) for t in triplets):
                return epoch * per_epoch + b
    raise AssertionError(f"{image_id} is never read")


def id_first_read_at_or_after(split, step: int, seed: int) -> tuple[str, int]:
    """An image id of the batch of ``step`` and the step that first reads it (at most ``step``)."""
    sampler = ResumableSampler(len(split), seed=seed)
    sampler.set_epoch(0)
    image_id = split.triplets[list(sampler)[step * BATCH]].reference
    return image_id, first_step_reading(split, image_id, seed, BATCH)


# ---------------------------------------------------------------------------- run identity


def test_run_folder_and_every_checkpoint_record_the_run_identity(data, tmp_path):
    from valfusion.engine import RunIdentity

    identity = RunIdentity.from_data(data, source="synthetic", data_options={"num_train": 64, "num_test": 16, "seed": 3})
    train(data, tiny_config(steps=4, checkpoint_every=2), tmp_path, identity=identity, progress=False)
    recorded = json.loads((tmp_path / "run_identity.json").read_text())
    assert recorded == identity.to_dict()
    assert recorded["source"] == "synthetic" and recorded["data_options"] == {"num_train": 64, "num_test": 16, "seed": 3}
    assert recorded["image_size"] == 32 and recorded["threads"] == torch.get_num_threads()
    assert len(recorded["annotations"]) == 64 and int(recorded["annotations"], 16) >= 0
    for path in sorted((tmp_path / "checkpoints").iterdir()):
        assert load_checkpoint(path)["identity"] == recorded, path.name


def test_fingerprint_changes_with_one_text_and_not_with_where_the_files_are(data):
    from valfusion.engine import annotation_fingerprint

    train_split = data.train
    first = train_split.triplets[0]
    edited = (Triplet(first.reference, first.text + " please", first.targets, first.source), *train_split.triplets[1:])
    moved = tuple(dataclasses.replace(t, source=f"/elsewhere/train.jsonl:{i + 1}") for i, t in enumerate(train_split.triplets))

    def with_split(triplets):
        return dataclasses.replace(data, train=dataclasses.replace(train_split, triplets=triplets))

    assert annotation_fingerprint(with_split(edited)) != annotation_fingerprint(data)
    assert annotation_fingerprint(with_split(moved)) == annotation_fingerprint(data)
    other_gallery = dataclasses.replace(data.test, gallery=data.test.gallery[:-1])
    assert annotation_fingerprint(dataclasses.replace(data, evaluation={"test": other_gallery})) != annotation_fingerprint(data)


@pytest.mark.slow
def test_fingerprint_is_the_same_in_another_process_with_another_hash_seed(data):
    from valfusion.engine import annotation_fingerprint

    script = (
        "from valfusion.data.synthetic import SyntheticBenchmark\n"
        "from valfusion.engine import annotation_fingerprint\n"
        "print(annotation_fingerprint(SyntheticBenchmark(num_train=64, num_test=16, seed=3, image_size=32).data()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == annotation_fingerprint(data)


def test_resume_on_other_annotations_is_refused_naming_them(data, tmp_path):
    train(data, tiny_config(steps=8), tmp_path, until=4, progress=False)
    other = SyntheticBenchmark(num_train=64, num_test=16, seed=4, image_size=32).data()
    with pytest.raises(ValueError, match="annotations: saved fingerprint") as refused:
        train(other, tiny_config(steps=8), tmp_path, resume=True, progress=False)
    assert "lr" not in str(refused.value)  # only what differs is named
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_0000004.pt"  # nothing trained


def test_resume_with_another_thread_count_is_refused(data, tmp_path):
    before = torch.get_num_threads()
    train(data, tiny_config(steps=8), tmp_path, until=4, progress=False)
    try:
        torch.set_num_threads(before + 1)
        with pytest.raises(ValueError, match=f"threads: saved {before}, given {before + 1}"):
            train(data, tiny_config(steps=8), tmp_path, resume=True, progress=False)
    finally:
        torch.set_num_threads(before)


def test_resume_names_every_difference_in_one_message(data, tmp_path):
    from valfusion.engine import RunIdentity

    saved = RunIdentity.from_data(data, source="synthetic", data_options={"num_train": 64})
    train(data, tiny_config(steps=8), tmp_path, until=4, identity=saved, progress=False)
    other = SyntheticBenchmark(num_train=64, num_test=16, seed=4, image_size=32).data()
    given = RunIdentity.from_data(other, source="synthetic", data_options={"num_train": 32})
    with pytest.raises(ValueError) as refused:
        train(other, tiny_config(steps=8, lr=1e-2), tmp_path, resume=True, identity=given, progress=False)
    message = str(refused.value)
    for part in ("lr: saved 0.003, given 0.01", "data option num_train: saved 64, given 32", "annotations: saved"):
        assert part in message
    assert "\n" not in message


# ---------------------------------------------------------------------------- stopping


def test_non_finite_loss_saves_the_state_of_the_last_completed_step(data, tmp_path):
    from valfusion.engine import TrainingStopped

    diverging = tiny_config(lr=1e8, grad_clip=0.0, warmup_steps=0)  # a user's too-large learning rate
    with pytest.raises(TrainingStopped) as stopped:
        train(data, diverging, tmp_path / "nan", progress=False)
    step = stopped.value.step
    assert stopped.value.reason == "non-finite loss" and 1 <= step < diverging.steps
    assert f"became nan at step {step + 1}" in str(stopped.value)
    assert stopped.value.checkpoint == latest_checkpoint(tmp_path / "nan" / "checkpoints")
    saved = load_checkpoint(stopped.value.checkpoint)
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values() if v.is_floating_point())
    # The weights, the BatchNorm statistics the diverging forward pass touched, the
    # optimiser and the RNG are those of a run that stopped after `step` steps.
    train(data, diverging, tmp_path / "clean", until=step, progress=False)
    assert_same_training_state(saved, newest_state(tmp_path / "clean"))
    # The checkpoint resumes, and replays the same step to the same divergence.
    with pytest.raises(TrainingStopped) as again:
        train(data, diverging, tmp_path / "nan", resume=True, progress=False)
    assert again.value.step == step and again.value.reason == "non-finite loss"


class _UnreadableAfterAWhile:
    """An image loader (the public ImageLoader protocol) in which one image has become unreadable."""

    def __init__(self, images, broken: str) -> None:
        self.images, self.broken, self.unreadable = images, broken, True

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.images

    def __call__(self, image_id: str) -> torch.Tensor:
        if self.unreadable and image_id == self.broken:
            raise DataError(f"images/{image_id}.png: cannot read image (image file is truncated)")
        return self.images(image_id)


def test_data_error_mid_training_saves_the_last_completed_step_and_resumes_once_fixed(data, tmp_path):
    from valfusion.engine import TrainingStopped

    config = tiny_config(steps=12)
    broken, expected_step = id_first_read_at_or_after(data.train, 5, config.seed)
    assert 1 <= expected_step <= 5
    images = _UnreadableAfterAWhile(data.train.images, broken)
    damaged = dataclasses.replace(data, train=dataclasses.replace(data.train, images=images))
    with pytest.raises(TrainingStopped) as stopped:
        train(damaged, config, tmp_path / "cut", progress=False)
    assert stopped.value.reason == "data error" and stopped.value.step == expected_step
    assert f"images/{broken}.png: cannot read image" in str(stopped.value) and "\n" not in str(stopped.value)
    assert isinstance(stopped.value.__cause__, DataError)
    train(data, config, tmp_path / "clean", until=expected_step, progress=False)
    assert_same_training_state(newest_state(tmp_path / "cut"), newest_state(tmp_path / "clean"))

    images.unreadable = False  # the file is put back
    resumed = train(damaged, config, tmp_path / "cut", resume=True, progress=False)
    straight = train(data, config, tmp_path / "straight", progress=False)
    assert _same(resumed.model.state_dict(), straight.model.state_dict())


class _SignalsWhenRead:
    """An image loader that sends this process SIGTERM the first time it reads one image."""

    def __init__(self, images, trigger: str) -> None:
        self.images, self.trigger, self.sent = images, trigger, False

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.images

    def __call__(self, image_id: str) -> torch.Tensor:
        if image_id == self.trigger and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self.images(image_id)


@pytest.mark.skipif(os.name != "posix", reason="delivers SIGTERM to this process")
def test_sigterm_stops_at_the_next_step_boundary_and_restores_the_previous_handler(data, tmp_path):
    from valfusion.engine import TrainingStopped

    config = tiny_config(steps=12)
    trigger, step = id_first_read_at_or_after(data.train, 4, config.seed)
    assert step >= 1
    seen = []

    def ours(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        run = dataclasses.replace(data, train=dataclasses.replace(data.train, images=_SignalsWhenRead(data.train.images, trigger)))
        with pytest.raises(TrainingStopped) as stopped:
            train(run, config, tmp_path / "cut", progress=False)
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == []  # the trainer's handler received the signal while it trained...
    assert handler_after is ours  # ...and put this one back afterwards
    assert (stopped.value.reason, stopped.value.signal, stopped.value.step) == ("signal", signal.SIGTERM, step)
    assert "SIGTERM" in str(stopped.value)
    train(data, config, tmp_path / "clean", until=step, progress=False)
    assert_same_training_state(newest_state(tmp_path / "cut"), newest_state(tmp_path / "clean"))


def _stopping_worker(rank: int, store: str, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist

    from valfusion.engine import TrainingStopped

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120)
    )
    try:
        data = SyntheticBenchmark(num_train=64, num_test=16, seed=3, image_size=32).data()
        config = tiny_config(steps=12)
        if rank == 1:  # only this process is signalled, while it reads its batch of step 3 or earlier
            sampler = ResumableSampler(len(data.train), seed=config.seed, rank=1, world_size=2)
            sampler.set_epoch(0)
            trigger = data.train.triplets[list(sampler)[3 * BATCH]].reference
            images = _SignalsWhenRead(data.train.images, trigger)
            data = dataclasses.replace(data, train=dataclasses.replace(data.train, images=images))
        try:
            train(data, config, Path(out_dir) / "run", progress=False)
            outcome = None
        except TrainingStopped as stopped:
            outcome = [stopped.reason, stopped.step, stopped.signal]
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(os.name != "posix", reason="delivers SIGTERM to one process")
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_stopping_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert outcomes[0] == outcomes[1]
    reason, step, signum = outcomes[0]
    assert (reason, signum) == ("signal", signal.SIGTERM) and 0 <= step <= 3
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [f"step_{step:07d}.pt"]
    assert len(load_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{step:07d}.pt")["rng"]) == 2


def test_stop_signals_install_nothing_outside_the_main_thread():
    from valfusion.engine import StopSignals

    before = signal.getsignal(signal.SIGINT)
    errors, inside = [], []

    def body() -> None:
        try:
            with StopSignals() as signals:
                inside.append(signal.getsignal(signal.SIGINT))
                assert signals.received is None
        except Exception as error:  # pragma: no cover - the failure this test looks for
            errors.append(error)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert errors == [] and inside == [before] and signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------------------- checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(("damage", "reason"), [(_truncate, "truncated or corrupt"), (_empty, "empty file")])
def test_damaged_newest_checkpoint_falls_back_to_the_older_intact_one(data, tmp_path, caplog, damage, reason):
    config = tiny_config(steps=12, checkpoint_every=4)
    straight = train(data, config, tmp_path / "straight", progress=False)
    train(data, config, tmp_path / "cut", until=8, progress=False)
    newest = tmp_path / "cut" / "checkpoints" / "step_0000008.pt"
    damage(newest)
    with caplog.at_level("WARNING", logger="valfusion"):
        resumed = train(data, config, tmp_path / "cut", resume=True, progress=False)
    (warning,) = [r for r in caplog.records if r.name == "valfusion.engine.trainer" and r.levelname == "WARNING"]
    assert f"skipped {newest}: {reason}" in warning.getMessage()
    assert _same(resumed.model.state_dict(), straight.model.state_dict())


def test_no_intact_checkpoint_is_one_error_naming_each_file(data, tmp_path):
    config = tiny_config(steps=12, checkpoint_every=4)
    train(data, config, tmp_path, until=8, progress=False)
    _truncate(tmp_path / "checkpoints" / "step_0000008.pt")
    _empty(tmp_path / "checkpoints" / "step_0000004.pt")
    with pytest.raises(ValueError, match="no intact checkpoint") as refused:
        train(data, config, tmp_path, resume=True, progress=False)
    assert "step_0000008.pt: truncated or corrupt" in str(refused.value)
    assert "step_0000004.pt: empty file" in str(refused.value)


@pytest.mark.parametrize(("keep", "expected"), [(2, [8, 10]), (3, [6, 8, 10]), (0, [2, 4, 6, 8, 10])])
def test_keep_checkpoints_deletes_all_but_the_newest(data, tmp_path, keep, expected):
    train(data, tiny_config(steps=10, checkpoint_every=2, keep_checkpoints=keep), tmp_path, progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"step_{s:07d}.pt" for s in expected]


def test_pruning_keeps_the_checkpoint_just_written_even_beside_a_later_stale_one(tmp_path):
    from valfusion.engine import prune_checkpoints

    for step in (2, 4, 6, 9):
        save_checkpoint(tmp_path / f"step_{step:07d}.pt", {"step": step})
    removed = prune_checkpoints(tmp_path, 1, up_to=6)
    assert [p.name for p in removed] == ["step_0000004.pt", "step_0000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000006.pt", "step_0000009.pt"]


def test_stale_temporaries_are_removed_when_a_run_starts_and_when_it_resumes(data, tmp_path):
    (tmp_path / "checkpoints").mkdir(parents=True)
    stale = [tmp_path / ".model.pt.0123456789abcdef.tmp", tmp_path / "checkpoints" / ".step_0000004.pt.fedcba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    train(data, tiny_config(steps=8), tmp_path, until=4, progress=False)
    assert not any(p.exists() for p in stale)
    for path in stale:
        path.write_bytes(b"half a file")
    train(data, tiny_config(steps=8), tmp_path, resume=True, progress=False)
    assert not any(p.exists() for p in stale)
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------------------- the command, with real signals

TINY_CLI = [
    "--image-size", "32", "--channels", "4,8,8", "--word-dim", "8", "--text-hidden-dim", "8", "--text-dim", "8",
    "--batch-size", "8", "--device", "cpu",
]


def _start_train(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "valfusion", "train", *argv, "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_a_step(process: subprocess.Popen) -> list[str]:
    """Read stderr until the first progress line (a step has completed); return what was read."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if " step " in line:
            return lines
    raise AssertionError(f"no progress line before the run ended: {''.join(lines)}")


def _finish(process: subprocess.Popen, lines: list[str]) -> tuple[int, list[str]]:
    lines += process.stderr.read().splitlines(keepends=True)
    return process.wait(timeout=300), [line.rstrip("\n") for line in lines]


def _same_model_files(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    return _same(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resume_ends_with_the_uninterrupted_weights(tmp_path, capsys, signum, status):
    # The default --checkpoint-every 0: before, a stopped run had no checkpoint at all.
    data = ["--data", "synthetic", "-o", "num_train=64", "-o", "num_test=16"]
    options = [*data, *TINY_CLI, "--steps", "40"]
    process = _start_train([*options, "--out", str(tmp_path / "cut")])
    read = _wait_for_a_step(process)
    process.send_signal(signum)
    code, lines = _finish(process, read)
    assert code == status, "\n".join(lines)
    stop_line = lines[-1]
    assert stop_line.startswith("valfusion train: stopped by") and "Traceback" not in "\n".join(lines)
    saved = latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert saved is not None and str(saved) in stop_line and "--resume" in stop_line
    assert 0 < load_checkpoint(saved)["step"] < 40

    assert main(["train", *options, "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    assert main(["train", *data, "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    assert _same_model_files(tmp_path / "cut", tmp_path / "straight")


def _png_folder(root: Path) -> Path:
    """A generic-format folder with 8 real PNG files and 16 training triplets."""
    colors = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 230), "yellow": (240, 220, 30)}
    (root / "img").mkdir(parents=True)
    for color, rgb in colors.items():
        for x, cell in ((2, "left"), (18, "right")):
            image = Image.new("RGB", (32, 32), (250, 250, 250))
            image.paste(rgb, (x, 10, x + 12, 22))
            image.save(root / "img" / f"{color}_{cell}.png")
    train_lines = [
        {"reference": f"img/{color}_{cell}.png", "text": f"make it {other}", "target": f"img/{other}_{cell}.png"}
        for color in colors for cell in ("left", "right") for other in colors if other != color
    ][:16]
    test_lines = [
        {"reference": f"img/{color}_left.png", "text": "move it right", "target": f"img/{color}_right.png"}
        for color in colors
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in train_lines))
    (root / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in test_lines))
    return root


@pytest.mark.slow
def test_an_image_file_damaged_mid_training_saves_a_checkpoint_and_resumes_once_restored(tmp_path, capsys):
    folder = _png_folder(tmp_path / "data")
    options = ["--data", str(folder), *TINY_CLI, "--batch-size", "4", "--steps", "40"]
    victim = folder / "img" / "red_left.png"
    original = victim.read_bytes()
    process = _start_train([*options, "--out", str(tmp_path / "cut")])
    read = _wait_for_a_step(process)
    victim.write_bytes(original[:20])  # the file is cut short under the running job
    code, lines = _finish(process, read)
    assert code == 1, "\n".join(lines)
    stop_lines = [line for line in lines if line.startswith("valfusion train:")]
    assert len(stop_lines) == 1 and "Traceback" not in "\n".join(lines)
    assert "red_left.png" in stop_lines[0] and "cannot read image" in stop_lines[0]
    saved = latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert saved is not None and str(saved) in stop_lines[0]

    victim.write_bytes(original)
    assert main(["train", *options, "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    assert _same_model_files(tmp_path / "cut", tmp_path / "straight")
