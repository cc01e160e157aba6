"""The prepared GPU run (``benchmarks/run_gpu.sh``, ``--suite gpu``): its CPU dry run and plan.

No GPU here: the dry run runs every part of the suite, in order, on the CPU at tiny sizes
(``--device cpu --tiny``), through the same script and the same child processes as the
GPU run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.suite import GPU_SUITE, suite_parts

ROOT = Path(__file__).resolve().parents[1]


# Every part but Recall@K, whose tiny run takes about 40 s here and is the run that
# tests/test_bench_recall.py makes (same benchmark, sizes, dtype and device).
DRY_RUN = [p.name for p in GPU_SUITE if p.bench != "recall"]


@pytest.mark.slow
def test_run_gpu_script_dry_run_on_the_cpu_writes_every_part(tmp_path) -> None:
    out = tmp_path / "cuda"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), str(out), "--device", "cpu", "--tiny",
         "--min-run-time", "0.01", "--only", ",".join(DRY_RUN)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = {
        "bf16": {"composite.md", "train_step.md", "composite_parts.md", "composite_sweep.md",
                 "losses.md"},
        "fp32-tf32": {"composite.md", "train_step.md", "composite_parts.md"},
    }
    for folder, names in expected.items():
        assert names == {p.name for p in (out / folder).glob("*.md")}, folder
    # Each part ran under its own precision flags, recorded in its header.
    assert "--dtype bf16" in (out / "bf16" / "composite.md").read_text()
    tf32 = (out / "fp32-tf32" / "composite.md").read_text()
    assert "--tf32" in tf32 and "--only levels" in tf32
    log = (out / "suite.md").read_text()
    # The parts ran in the suite's order: bf16 composite levels first.
    ran = [line.split("|")[1].strip() for line in log.splitlines() if "| done |" in line]
    assert ran == DRY_RUN and ran[0] == "levels-bf16"


def test_run_gpu_script_takes_options_without_an_out_dir(tmp_path) -> None:
    # `run_gpu.sh --device cpu --only ...` must not take "--device" for OUT_DIR. A part
    # name that does not exist stops the run before anything is measured or written.
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), "--device", "cpu", "--only",
         "no-such-part"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--only: expected parts of the gpu suite" in done.stderr
    assert "no-such-part" in done.stderr


def test_gpu_suite_puts_the_headline_figures_first_and_fits_about_eight_minutes() -> None:
    names = [p.name for p in GPU_SUITE]
    assert names[:2] == ["levels-bf16", "levels-fp32-tf32"]
    assert {p.precision for p in GPU_SUITE if p.dtype == "fp32" and p.bench != "recall"} == {
        "fp32-tf32"}
    assert 6 * 60 <= sum(p.estimate_s for p in GPU_SUITE) <= 9 * 60


def test_suite_only_selects_parts_and_rejects_unknown_names() -> None:
    assert [p.name for p in suite_parts("gpu", "recall-fp32, levels-bf16")] == [
        "levels-bf16", "recall-fp32"]  # the suite's order, not the option's
    with pytest.raises(ValueError, match="--only: expected parts of the gpu suite"):
        suite_parts("gpu", "levels")


def test_suite_with_an_unknown_part_is_a_one_line_error(capsys, tmp_path) -> None:
    code = main(["--suite", "gpu", "--device", "cpu", "--only", "nope", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_suite_refuses_options_it_sets_itself(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", "gpu", "--dtype", "bf16"])
    assert exit_info.value.code == 2 and "drop --dtype" in capsys.readouterr().err
