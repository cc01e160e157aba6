"""The README's commands and example are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci_command = (ROOT / ".ci" / "test-command").read_text().strip()
    assert ci_command in [block.strip() for block in _code_blocks("bash")]
    assert "bash .ci/test-command" in (ROOT / ".ci" / "run").read_text()


def test_readme_demo_command_runs_valfusion_demo() -> None:
    demo = [b.strip() for b in _code_blocks("bash") if "valfusion demo" in b]
    assert len(demo) == 1
    assert "torch==2.13.0" in demo[0]  # the CPU wheel on this machine, not a CUDA download


def test_readme_python_example_runs_and_prints_its_shape(capsys) -> None:
    (example,) = _code_blocks("python")
    exec(compile(example, "README.md", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip() == "torch.Size([4, 128])"
