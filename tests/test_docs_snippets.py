"""The code in the docs runs: every ```python block of docs/**/*.md is executed.

The blocks of one page run in order in one namespace (a page reads like a session), in a
temporary working directory that also sees the repository's ``tests/`` folder, so an
example may read the annotation samples under ``tests/fixtures/`` as it would in a source
checkout. A ```text block titled "Output" right after a python block is what that block
prints, and must match exactly.

A block may be left out only with a reason, written just above it::

    <!-- no-run: needs the FashionIQ images -->

and only a few blocks may be left out.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MAX_SKIPPED = 6

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run:(?P<reason>.*?)-->\s*$")
_OUTPUT_INFO = re.compile(r'^text\b.*\btitle="Output"')


@dataclass
class Fence:
    """One fenced block of a page."""

    info: str
    code: str
    first_line: int  # 1-based line of the opening fence
    last_line: int  # 1-based line of the closing fence


@dataclass
class Example:
    """A python block, what it must print (if stated), and why it is not run (if so)."""

    page: Path
    line: int
    code: str
    expected_output: str | None
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _fences(lines: list[str]) -> list[Fence]:
    fences, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, marker = opening["indent"], opening["fence"]
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != marker:
            body.append(
                lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip()
            )
            j += 1
        fences.append(Fence(opening["info"].strip(), "\n".join(body) + "\n", i + 1, j + 1))
        i = j + 1
    return fences


def _examples(page: Path) -> list[Example]:
    lines = page.read_text(encoding="utf-8").splitlines()
    fences = _fences(lines)
    examples = []
    for index, fence in enumerate(fences):
        if not re.match(r"^(python|py)\b", fence.info):
            continue
        above = [line for line in lines[: fence.first_line - 1] if line.strip()]
        no_run = _NO_RUN.match(above[-1]) if above else None
        expected = None
        if index + 1 < len(fences) and _OUTPUT_INFO.match(fences[index + 1].info):
            between = lines[fence.last_line : fences[index + 1].first_line - 1]
            if all(not line.strip() for line in between):
                expected = fences[index + 1].code
        examples.append(
            Example(
                page,
                fence.first_line,
                fence.code,
                expected,
                no_run["reason"].strip() if no_run else None,
            )
        )
    return examples


EXAMPLES = {page: _examples(page) for page in PAGES}
ALL_EXAMPLES = [example for examples in EXAMPLES.values() for example in examples]
RUNNABLE_PAGES = [page for page, examples in EXAMPLES.items() if examples]


def test_docs_contain_python_examples() -> None:
    assert len(ALL_EXAMPLES) >= 10, [e.where for e in ALL_EXAMPLES]


def test_every_skipped_example_gives_a_reason() -> None:
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if "no-run" in line:
                match = _NO_RUN.match(line)
                assert match and match["reason"].strip(), (
                    f"{page.relative_to(ROOT)}:{number}: {line!r}"
                )


def test_few_examples_are_skipped() -> None:
    skipped = [f"{e.where} ({e.skip_reason})" for e in ALL_EXAMPLES if e.skip_reason]
    assert len(skipped) <= MAX_SKIPPED, skipped


def test_every_output_block_follows_a_python_block() -> None:
    claimed = {(e.page, e.line) for e in ALL_EXAMPLES if e.expected_output is not None}
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        fences = _fences(lines)
        for index, fence in enumerate(fences):
            if _OUTPUT_INFO.match(fence.info):
                previous = fences[index - 1] if index else None
                assert previous is not None and (page, previous.first_line) in claimed, (
                    f"{page.relative_to(ROOT)}:{fence.first_line}: an Output block must directly "
                    "follow the python block that prints it"
                )


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run_and_print_what_the_page_shows(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for example in EXAMPLES[page]:
        if example.skip_reason:
            continue
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            try:
                exec(compile(example.code, example.where, "exec"), namespace)
            except Exception as error:  # the location of the block makes the failure findable
                raise AssertionError(f"{example.where}: the example raised {error!r}") from error
        if example.expected_output is not None:
            printed = [line.rstrip() for line in stdout.getvalue().rstrip("\n").split("\n")]
            shown = [line.rstrip() for line in example.expected_output.rstrip("\n").split("\n")]
            assert printed == shown, f"{example.where}: printed {printed}, the page shows {shown}"
