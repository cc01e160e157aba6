"""The command-line reference shows the command's real help texts.

Every ```text block titled "valfusion ... --help" on docs/api/cli.md must be exactly what
that command prints (at a terminal width of 88 columns, as the page was made).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from valfusion.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api" / "cli.md"
_BLOCK = re.compile(
    r'^```text title="(?P<command>valfusion[^"]*) --help"\n(?P<text>.*?)^```$', re.M | re.S
)
BLOCKS = {m["command"]: m["text"] for m in _BLOCK.finditer(PAGE.read_text(encoding="utf-8"))}
COMMANDS = (
    "valfusion",
    "valfusion demo",
    "valfusion train",
    "valfusion evaluate",
    "valfusion search",
    "valfusion bench",
)


def test_the_page_shows_the_help_of_every_command() -> None:
    assert sorted(BLOCKS) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_on_the_page_is_what_the_command_prints(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "88")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        main([*command.split()[1:], "--help"])
    assert exit_info.value.code == 0
    assert printed.getvalue().rstrip("\n") == BLOCKS[command].rstrip("\n")


_TOML = re.compile(r'^```toml title="(?P<name>[^"]+)"\n(?P<text>.*?)^```$', re.M | re.S)


def test_the_config_file_example_on_the_page_is_accepted(tmp_path) -> None:
    from valfusion.cli import build_parser

    examples = {m["name"]: m["text"] for m in _TOML.finditer(PAGE.read_text(encoding="utf-8"))}
    assert list(examples) == ["run.toml"]
    path = tmp_path / "run.toml"
    path.write_text(examples["run.toml"], encoding="utf-8")
    args = build_parser().parse_args(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert (args.backbone, args.batch_size, args.lr, args.channels) == ("resnet50", 32, 2e-4, (32, 64, 128))
    assert args.drop_missing_images is True and dict(args.data_option) == {"eval_split": "val"}
