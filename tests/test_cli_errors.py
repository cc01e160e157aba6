"""What the command reports how: a user's mistake in one line (exit 2, its traceback with
``--debug``), a bug with its traceback (exit 1); and ``--version`` without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_cli import TINY, run, write_folder

import valfusion.engine.evaluation
from valfusion.models import VAL


def _bug(*_args, **_kwargs):
    raise ValueError("simulated bug: an internal shape mismatch")


def test_a_bug_while_training_keeps_its_traceback_and_exits_1(capsys, tmp_path, monkeypatch):
    # A ValueError from inside a training step is the library's fault, not the user's.
    monkeypatch.setattr(VAL, "compute_loss", _bug)
    code, _, err = run(["train", "--data", str(write_folder(tmp_path / "data")), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert code == 1
    assert "Traceback" in err and "compute_loss" not in err.splitlines()[-1]
    assert "ValueError: simulated bug" in err and "internal error" in err.splitlines()[-1]


def test_a_bug_while_evaluating_keeps_its_traceback_and_exits_1(capsys, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    assert run(["train", "--data", str(folder), "--out", str(tmp_path / "run"), *TINY], capsys)[0] == 0
    monkeypatch.setattr(valfusion.engine.evaluation, "recall_at_k", _bug)
    code, _, err = run(["evaluate", str(tmp_path / "run"), "--data", str(folder)], capsys)
    assert code == 1 and "Traceback" in err and "ValueError: simulated bug" in err


def test_a_check_of_the_run_set_up_is_a_user_error(capsys, tmp_path):
    # The Trainer's own check (a batch larger than the training split), raised before any step.
    options = [*TINY[:2], "--batch-size", "64", *TINY[4:]]
    code, _, err = run(["train", "--data", str(write_folder(tmp_path / "data")), "--out", str(tmp_path / "run"), *options], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "batch_size: the training split has 16 triplets" in err


def test_debug_prints_the_traceback_of_a_user_error_and_still_exits_2(capsys, tmp_path):
    argv = ["train", "--data", f"folder:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "run"), *TINY]
    code, _, quiet = run(argv, capsys)
    code_debug, _, loud = run(["--debug", *argv], capsys)
    assert code == code_debug == 2
    assert "Traceback" not in quiet and quiet.count("\n") == 1
    assert "Traceback" in loud and "DataError" in loud
    # The same one line closes it.
    assert loud.splitlines()[-1] == quiet.strip() and "nowhere" in quiet


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from valfusion.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "torch imported: False"
