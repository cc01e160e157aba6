"""The top-level API: every advertised name imports from ``valfusion``, lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

import valfusion

INIT = Path(valfusion.__file__)


def test_issue_named_layers_import_from_the_top() -> None:
    from valfusion import (
        TIRG,
        CompositeTransformer,
        ConcatFusion,
        JointAttentionalPreservation,
        SelfAttentionalTransformation,
    )

    for layer in (TIRG, CompositeTransformer, ConcatFusion, JointAttentionalPreservation,
                  SelfAttentionalTransformation):
        assert issubclass(layer, torch.nn.Module), layer


def test_every_name_in_all_resolves_to_its_subpackage_object() -> None:
    import importlib

    for name, module in valfusion._EXPORTS.items():
        assert getattr(valfusion, name) is getattr(importlib.import_module(module), name), name


def test_type_checking_imports_match_the_lazy_table() -> None:
    tree = ast.parse(INIT.read_text())
    guarded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                for alias in stmt.names:
                    assert valfusion._EXPORTS[alias.name] == stmt.module, alias.name
                    guarded.add(alias.name)
    assert guarded == set(valfusion._EXPORTS)


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        valfusion.NoSuchLayer  # noqa: B018
    except AttributeError as error:
        assert "NoSuchLayer" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_import_valfusion_does_not_import_optional_or_heavy_modules() -> None:
    code = (
        "import sys, valfusion; "
        "print(sorted(m for m in ('torchmetrics', 'PIL', 'matplotlib', 'tqdm', 'torchvision', 'timm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_a_release_string() -> None:
    parts = valfusion.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)
