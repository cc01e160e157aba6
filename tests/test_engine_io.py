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


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the previous one after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_open_would_give_under_the_umask(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "reference.txt", "w") as handle:  # what a plain open() gives
        handle.write("x")
    expected = (tmp_path / "reference.txt").stat().st_mode & 0o777
    assert expected == 0o666 & ~mask
    for path in (
        atomic_write_text(tmp_path / "a.txt", "x"),
        atomic_write_json(tmp_path / "a.json", {"x": 1}),
        atomic_write_torch(tmp_path / "a.pt", {"w": torch.ones(2)}),
        atomic_write_bytes(tmp_path / "a.bin", b"x"),
    ):
        assert path.stat().st_mode & 0o777 == expected, path.name


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_vocabulary_and_saved_model_files_are_readable_by_others_under_umask_022(tmp_path, umask):
    from valfusion import VAL, VALConfig
    from valfusion.encoders import Vocabulary

    umask(0o022)
    vocabulary = Vocabulary.from_texts(["make it red", "shorter sleeves"])
    config = VALConfig(vocab_size=len(vocabulary), image_size=32, backbone_channels=(8, 16, 32),
                       word_dim=8, text_hidden_dim=16, text_dim=16)
    model = VAL(config, vocabulary=vocabulary)
    folder = model.save_pretrained(tmp_path / "run")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert files, "save_pretrained wrote nothing"
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}


def test_every_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync
    renamed = []
    real_replace = os.replace

    def fsync(fd):
        synced.append(fd)
        real_fsync(fd)

    def replace(src, dst):
        renamed.append((len(synced), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert renamed == [(1, str(tmp_path / "a.txt"))]  # the data was synced before the rename


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    from valfusion.engine.io import remove_stale_temporaries

    keep = [tmp_path / "model.pt", tmp_path / ".hidden.tmp", tmp_path / "notes.0123456789abcdef.tmp"]
    for path in keep:
        path.write_text("keep")
    stale = [tmp_path / ".model.pt.0123456789abcdef.tmp", tmp_path / ".metrics.json.fedcba9876543210.tmp"]
    for path in stale:
        path.write_text("half")
    removed = remove_stale_temporaries(tmp_path)
    assert removed == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "missing") == []


@pytest.mark.skipif(not hasattr(os, "kill") or os.name != "posix", reason="SIGKILL")
def test_a_write_killed_mid_way_leaves_a_temporary_that_cleanup_removes(tmp_path):
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from valfusion._io import atomic_write\n"
        "def write(handle):\n"
        "    handle.write(b'half')\n"
        "    handle.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    (tmp_path / "model.pt").write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pt")], check=False)
    assert done.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.pt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".model.pt.")
    assert (tmp_path / "model.pt").read_bytes() == b"old"

    from valfusion.engine.io import remove_stale_temporaries

    assert remove_stale_temporaries(tmp_path) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_the_package_has_one_atomic_writer():
    import pathlib

    import valfusion

    root = pathlib.Path(valfusion.__file__).parent
    sources = [*root.rglob("*.py"), *(root.parent / "benchmarks").rglob("*.py")]
    writers = [p.relative_to(root.parent).as_posix() for p in sources
               if any(call in p.read_text() for call in ("os.replace(", "mkstemp(", "NamedTemporaryFile("))]
    assert writers == ["valfusion/_io.py"]
