"""Imports go one way: no import cycle in valfusion, and valfusion.metrics is layered like torchmetrics.

Read from the source with ``ast`` (nothing is imported). A module's imports are those of its
module level, including ``if TYPE_CHECKING:`` and ``try:`` blocks (a cycle that only type
checkers follow is still a cycle in the design), but not those inside functions or classes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "valfusion"

# Each module of valfusion.metrics may import only the modules before it:
# input checks -> data descriptions and kernels -> the functional Recall@K (and its
# subset form) -> the Metric.
METRICS_LAYERS = (
    "valfusion.metrics._checks",
    "valfusion.metrics.protocols",
    "valfusion.metrics.targets",
    "valfusion.metrics.ranking",
    "valfusion.metrics.recall",
    "valfusion.metrics.subset",
    "valfusion.metrics.recall_metric",
)


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = module_files()


def _statements(body: list[ast.stmt], module_level: bool) -> Iterator[ast.stmt]:
    for node in body:
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _statements(getattr(node, field, None) or [], module_level)


def imported_modules(name: str, module_level: bool = True) -> set[str]:
    """The valfusion modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[name]
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", module_level)


def imports_in(source: str, name: str, is_package: bool, module_level: bool = True) -> set[str]:
    """The valfusion modules that ``source``, the text of module ``name``, imports."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(source)
    nodes = _statements(tree.body, module_level) if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    found.add(f"{source}.{alias.name}")
                elif source in MODULES:
                    found.add(source)
    found.discard(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


SAMPLE = """
from typing import TYPE_CHECKING
from . import ranking
from .targets import LabelTargets
import valfusion._validation
if TYPE_CHECKING:
    from valfusion.metrics.recall import RecallResult
def later():
    from valfusion.metrics.recall_metric import RecallAtK
"""


def test_import_reader_sees_module_level_imports_of_every_form():
    found = imports_in(SAMPLE, "valfusion.metrics.protocols", is_package=False)
    assert found == {
        "valfusion.metrics.ranking",
        "valfusion.metrics.targets",
        "valfusion._validation",
        "valfusion.metrics.recall",
    }


def test_import_reader_reads_function_imports_only_when_asked():
    found = imports_in(SAMPLE, "valfusion.metrics.protocols", is_package=False, module_level=False)
    assert "valfusion.metrics.recall_metric" in found


def test_no_import_cycle_among_valfusion_modules():
    graph = {name: imported_modules(name) for name in MODULES}
    assert import_cycles(graph) == []


def test_metrics_modules_import_only_lower_layers():
    assert set(METRICS_LAYERS) == {n for n in MODULES if n.startswith("valfusion.metrics.")}
    upward = {}
    for position, name in enumerate(METRICS_LAYERS):
        # Any import, even one inside a function: a lazy import upward is still a cycle.
        above = imported_modules(name, module_level=False) & set(METRICS_LAYERS[position:])
        if above:
            upward[name] = sorted(above)
    assert upward == {}


def test_protocols_import_nothing_that_computes():
    assert imported_modules("valfusion.metrics.protocols", module_level=False) <= {"valfusion.metrics._checks"}
