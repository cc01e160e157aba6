"""Atomic writes: a destination is either the old file or the complete new one, never a fragment."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from valfusion.engine.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_torch,
)


class _FailsWhilePickling:
    """Serialising this object raises, half-way through a torch.save."""

    def __reduce__(self):
        raise pickle.PicklingError("simulated failure in the middle of a write")


def test_json_write_round_trips(tmp_path):
    value = {"recall@1": 0.25, "protocol": "val", "splits": {"dress": [1, 2]}}
    path = atomic_write_json(tmp_path / "metrics.json", value)
    assert json.loads(path.read_text()) == value


def test_write_creates_missing_parent_folders(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b" / "note.txt", "hello")
    assert path.read_text() == "hello"


def test_successful_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "x.txt", "1")
    atomic_write_text(tmp_path / "x.txt", "2")
    atomic_write_torch(tmp_path / "x.pt", {"w": torch.ones(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt", "x.txt"]


def test_failure_during_torch_save_keeps_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "step.pt"
    atomic_write_torch(path, {"weights": torch.arange(4.0)})
    before = path.read_bytes()
    with pytest.raises(pickle.PicklingError):
        atomic_write_torch(path, {"weights": torch.randn(256, 256), "bad": _FailsWhilePickling()})
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["step.pt"]


def test_unserialisable_json_raises_and_keeps_the_old_file(tmp_path):
    path = atomic_write_json(tmp_path / "results.json", {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_interrupt_during_write_removes_the_temporary_file(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")

    class _Interrupting:
        def __reduce__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_torch(path, [torch.zeros(10), _Interrupting()])
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_failure_after_the_new_bytes_are_written_keeps_the_old_file(tmp_path, monkeypatch):
    # Fault injection at the last moment before the rename (a full disk on flush): the
    # temporary file then holds the whole new content, which must never replace the old.
    path = atomic_write_json(tmp_path / "metrics.json", {"recall@1": 0.5})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"recall@1": 0.9, "padding": "x" * 100_000})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"recall@1": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
