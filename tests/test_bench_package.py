"""The benchmarks ship in the wheel as ``valfusion.benchmarks`` and run from a pip install.

The distribution is built from a copy of the source tree (sdist, then the wheel from the
sdist, as ``python -m build`` does), installed into fresh virtual environments that see
only the test environment's third-party packages (torch, einops, torchmetrics) and not its
``valfusion``, and run from a directory that is not a checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODULES = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the tests run with the checkout on it, which would hide the install.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _copy_source(dest: Path) -> Path:
    """The files a build reads, without build outputs or the committed results."""
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    shutil.copytree(ROOT / "valfusion", dest / "valfusion", ignore=ignore)
    shutil.copytree(ROOT / "benchmarks", dest / "benchmarks", ignore=ignore)
    (dest / "benchmarks" / "results").mkdir()  # a checkout has it: it must stay out of the wheel
    (dest / "benchmarks" / "results" / "composite.md").write_text("# committed results\n")
    return dest


def _fresh_venv(path: Path) -> Path:
    """A venv whose only extra path is the test environment's site-packages (third-party
    packages; its editable ``valfusion`` hook is a ``.pth`` there, which a path added by a
    ``.pth`` file does not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   path).stdout.strip()
    Path(purelib, "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args: str | Path, cwd: Path) -> None:
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                 "--no-index", "--no-build-isolation", "-q", *args], cwd)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``sdist``, ``wheel`` (built from the sdist) and ``source`` (the tree they came from)."""
    source = _copy_source(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    done = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source],
                source)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("valfusion-*.whl")
    (sdist,) = out.glob("valfusion-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "source": source}


def test_wheel_carries_every_benchmark_module_and_not_the_results(dist) -> None:
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    shipped = sorted(n.removeprefix("valfusion/benchmarks/") for n in names
                     if n.startswith("valfusion/benchmarks/"))
    assert shipped == BENCH_MODULES
    assert not [n for n in names if "results" in n.split("/") or n.endswith(".md")]
    assert not [n for n in names if n.startswith("benchmarks/")]  # no top-level package
    assert "valfusion/py.typed" in names and "valfusion/cli.py" in names


def test_sdist_carries_the_benchmark_sources_and_not_the_results(dist) -> None:
    with tarfile.open(dist["sdist"]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert {f"benchmarks/{m}" for m in BENCH_MODULES} <= set(names)
    assert "setup.py" in names
    assert not [n for n in names if n.startswith("benchmarks/results")]


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin`` folder."""
    python = _fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    _pip_install(python, dist["wheel"], cwd=dist["wheel"].parent)
    return python.parent


def test_installed_wheel_runs_python_m_valfusion_benchmarks_help(installed, tmp_path) -> None:
    done = _run([installed / "python", "-m", "valfusion.benchmarks", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m valfusion.benchmarks" in done.stdout and "--suite" in done.stdout
    where = _run([installed / "python", "-c",
                  "import valfusion.benchmarks as b; print(b.__file__)"], tmp_path).stdout
    assert Path(where.strip()).is_relative_to(installed.parent)


def test_valfusion_bench_from_the_wheel_writes_results_in_the_current_directory(
    installed, tmp_path
) -> None:
    done = _run([installed / "valfusion", "bench", "losses", "--tiny", "--min-run-time", "0.01"],
                tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "valfusion-bench-results" / "losses.md").read_text()
    assert "- command: `python -m valfusion.benchmarks losses --tiny" in text
    assert "- CPU: " in text and "| triplet" in text


def test_valfusion_bench_from_the_wheel_writes_where_out_dir_says(installed, tmp_path) -> None:
    # The composite benchmark measures peak memory in a child process, which must import
    # the installed `valfusion.benchmarks` (there is no checkout on its path).
    done = _run([installed / "valfusion", "bench", "composite", "--tiny", "--only", "levels",
                 "--dtype", "bf16", "--min-run-time", "0.01", "--out-dir", tmp_path / "out"],
                tmp_path)
    assert done.returncode == 0, done.stderr
    assert "compute dtype bf16 (autocast)" in (tmp_path / "out" / "composite.md").read_text()
    assert not (tmp_path / "valfusion-bench-results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_valfusion_bench_on_cuda_without_cuda_is_a_one_line_error(installed, tmp_path) -> None:
    done = _run([installed / "valfusion", "bench", "losses", "--device", "cuda"], tmp_path)
    assert done.returncode == 2
    assert "--device cuda: CUDA is not available" in done.stderr
    assert done.stderr.count("\n") == 1


def test_editable_install_maps_valfusion_benchmarks_to_the_checkout(dist, tmp_path) -> None:
    source = dist["source"]
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", source, cwd=tmp_path)
    where = _run([python, "-c", "import valfusion.benchmarks as b; print(b.__file__)"], tmp_path)
    assert Path(where.stdout.strip()) == source / "benchmarks" / "__init__.py", where.stderr
    for module in ("valfusion.benchmarks", "benchmarks"):
        # `python -m benchmarks` works from the checkout's root, as before.
        done = _run([python, "-m", module, "--help"], source)
        assert done.returncode == 0 and f"python -m {module}" in done.stdout, done.stderr
    # The results header gives the name it was run by, though the file is the checkout's.
    done = _run([python, "-m", "valfusion.benchmarks", "losses", "--tiny", "--min-run-time",
                 "0.01", "--out-dir", tmp_path / "out"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "- command: `python -m valfusion.benchmarks losses" in (
        tmp_path / "out" / "losses.md").read_text()
