"""The docs and the package metadata point only to places that exist.

- No link to a documentation host or source repository the project does not have.
- Every file a page names (``something.md``), in its own text or in the benchmark results
  it includes, is in the repository; none is a design note kept outside it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Hosts the project does not have (yet): a link to them leads nowhere.
MISSING_HOSTS = re.compile(r"valfusion\.readthedocs\.io|github\.com/valfusion", flags=re.I)
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::[-0-9:,]*)?"\s*$', flags=re.M)
_NAMED_MD = re.compile(r"(?<![\w./-])(?P<name>[\w./-]+\.md)\b")


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _included(page: Path) -> list[Path]:
    return [ROOT / m["path"] for m in _SNIPPET.finditer(page.read_text())]


def test_no_link_points_at_a_host_the_project_does_not_have():
    files = [ROOT / "pyproject.toml", ROOT / "mkdocs.yml", ROOT / "README.md", *_pages(),
             *(ROOT / "benchmarks" / "results").rglob("*.md")]
    found = [f"{p.relative_to(ROOT)}: {m[0]}" for p in files
             for m in MISSING_HOSTS.finditer(p.read_text())]
    assert found == [], "links to a docs host or repository that do not exist"


# Files valfusion writes into a user's output folder (not repository files).
_WRITTEN_BY_THE_PACKAGE = {"results.md", "suite.md", "kernels.md"}  # kernels.md: run_gpu.sh


def _resolves(name: str, *folders: Path) -> bool:
    return name in _WRITTEN_BY_THE_PACKAGE or any((folder / name).is_file() for folder in (*folders, ROOT, DOCS))


def test_every_file_a_page_names_is_in_the_repository():
    missing = []
    for page in _pages():
        sources = [(page, (page.parent,))]
        # An included results file names files next to itself or in the repository.
        sources += [(inc, (inc.parent, page.parent)) for inc in _included(page)]
        for source, folders in sources:
            text = _SNIPPET.sub("", source.read_text())
            for match in _NAMED_MD.finditer(text):
                name = match["name"].split("#")[0]
                if not _resolves(name, *folders):
                    missing.append(f"{source.relative_to(ROOT)} (shown on "
                                   f"{page.relative_to(DOCS)}): {name}")
    assert missing == []


def test_no_page_points_into_the_design_notes_outside_the_repository():
    pattern = re.compile(r"shared/design|/design/|\bdesign/\w+\.md")
    found = [f"{p.relative_to(ROOT)}: {m[0]}" for page in _pages()
             for p in (page, *_included(page)) for m in pattern.finditer(p.read_text())]
    assert found == []
