"""Docstring coverage of the public API, and an API page for every public name.

The public API is every name in ``valfusion.__all__`` and in the ``__all__`` of the
subpackages the API reference documents. For it:

- every public class, function and constant has a docstring (a constant's is the string
  literal right after its assignment, which is what mkdocstrings renders);
- every public method and property of a public class has its own docstring;
- every parameter of a public function, method or class constructor is named in the
  docstring's ``Args:`` section (dataclass fields may be in ``Attributes:``), and the
  section names no parameter the signature lacks;
- every public name is rendered by a ``::: valfusion.<subpackage>.<name>`` directive on its
  subpackage's page under ``docs/api/``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import valfusion

ROOT = Path(__file__).resolve().parents[1]
API_DOCS = ROOT / "docs" / "api"
SUBPACKAGES = ("layers", "losses", "metrics", "encoders", "models", "data", "engine")
# nn.Module's display hook: a repr detail, not API (mkdocstrings hides it without a docstring).
NOT_API_METHODS = frozenset({"extra_repr"})
_SECTION = re.compile(r"^(?P<indent>[ \t]*)(?P<title>[A-Z][A-Za-z ]*):[ \t]*$")
_ENTRY = re.compile(r"^(?P<name>\*{0,2}\w+)\s*(\([^)]*\))?\s*:")


def _public_names() -> dict[str, tuple[str, object]]:
    """``{"valfusion.<sub>.<name>": (name, object)}`` for the whole public API."""
    names: dict[str, tuple[str, object]] = {}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"valfusion.{sub}")
        for name in module.__all__:
            names[f"valfusion.{sub}.{name}"] = (name, getattr(module, name))
    for name in valfusion.__all__:
        if name == "__version__":
            continue
        module_name = valfusion._EXPORTS[name]
        names.setdefault(f"{module_name}.{name}", (name, getattr(valfusion, name)))
    return names


PUBLIC = _public_names()


def _is_documentable(value: object) -> bool:
    return inspect.isclass(value) or inspect.isfunction(value) or inspect.isroutine(value)


def _own_docstring(value: object) -> str | None:
    doc = (
        value.__dict__.get("__doc__") if inspect.isclass(value) else getattr(value, "__doc__", None)
    )
    if not doc or not doc.strip():
        return None
    if (
        inspect.isclass(value)
        and dataclasses.is_dataclass(value)
        and doc.startswith(f"{value.__name__}(")
    ):
        return None  # the signature dataclasses write when a class has no docstring
    return inspect.cleandoc(doc)


def _modules() -> Iterator[ModuleType]:
    for info in pkgutil.walk_packages(valfusion.__path__, prefix="valfusion."):
        if info.name.rsplit(".", 1)[-1] in ("__main__", "cli"):
            continue  # entry points: importing __main__ runs the command line
        yield importlib.import_module(info.name)


MODULES = list(_modules())


def _constant_docstring(name: str, value: object) -> str | None:
    """The string literal right after the module-level assignment that defines ``name``."""
    for module in MODULES:
        if getattr(module, name, None) is not value or module.__file__ is None:
            continue
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for statement, following in zip(tree.body, [*tree.body[1:], None]):
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [statement.target]
                if isinstance(statement, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    return following.value.value
                return None
    return None


def _sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections: ``{"Args": [entry names], "Attributes": [...], ...}``."""
    sections: dict[str, list[str]] = {}
    lines = doc.split("\n")
    for i, line in enumerate(lines):
        match = _SECTION.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        entries, entry_indent = [], None
        for body in lines[i + 1 :]:
            if not body.strip():
                continue
            width = len(body) - len(body.lstrip())
            if width <= indent:
                break
            if entry_indent is None:
                entry_indent = width
            if width == entry_indent:
                entry = _ENTRY.match(body.strip())
                if entry:
                    entries.append(entry["name"].lstrip("*"))
        sections.setdefault(match["title"], []).extend(entries)
    return sections


def _parameters(function: Callable[..., object], *, skip_first: bool) -> list[str]:
    parameters = list(inspect.signature(function).parameters.values())
    if skip_first and parameters:
        parameters = parameters[1:]
    return [p.name for p in parameters]


def _defined_in_valfusion(function: object) -> bool:
    module = getattr(inspect.unwrap(function), "__module__", "") or ""
    return module.startswith("valfusion")


def _public_classes() -> dict[str, type]:
    return {path: value for path, (_, value) in PUBLIC.items() if inspect.isclass(value)}


def _public_methods() -> dict[str, tuple[type, str, object]]:
    """``{"valfusion.<sub>.<Class>.<method>": (class, name, raw attribute)}``."""
    methods = {}
    for path, cls in _public_classes().items():
        for name, attribute in vars(cls).items():
            if name.startswith("_") or name in NOT_API_METHODS:
                continue
            if isinstance(attribute, (staticmethod, classmethod)) or inspect.isfunction(attribute):
                methods[f"{path}.{name}"] = (cls, name, attribute)
            elif isinstance(attribute, property):
                methods[f"{path}.{name}"] = (cls, name, attribute)
    return methods


METHODS = _public_methods()


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for path, (name, value) in PUBLIC.items():
        if _is_documentable(value):
            doc = _own_docstring(value)
        else:
            doc = _constant_docstring(name, value)
        if doc is None:
            missing.append(path)
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_method_and_property_has_a_docstring() -> None:
    missing = []
    for path, (_, _, attribute) in METHODS.items():
        target = attribute.fget if isinstance(attribute, property) else attribute
        target = target.__func__ if isinstance(target, (staticmethod, classmethod)) else target
        if not (target.__doc__ and target.__doc__.strip()):
            missing.append(path)
    assert not missing, f"public methods/properties without a docstring: {missing}"


def _argument_problems(
    path: str, doc: str | None, parameters: list[str], *, fields: bool
) -> list[str]:
    if not parameters:
        return []
    if doc is None:
        return [f"{path}: no docstring for parameters {parameters}"]
    sections = _sections(doc)
    documented = set(sections.get("Args", [])) | set(sections.get("Arguments", []))
    documented |= set(sections.get("Parameters", []))
    allowed = documented | (set(sections.get("Attributes", [])) if fields else set())
    problems = [f"{path}: parameter {p!r} not in Args" for p in parameters if p not in allowed]
    problems += [
        f"{path}: Args names {d!r}, not a parameter" for d in sorted(documented - set(parameters))
    ]
    return problems


def test_every_public_function_documents_its_arguments() -> None:
    problems = []
    for path, (_, value) in PUBLIC.items():
        if inspect.isfunction(value) or (inspect.isroutine(value) and not inspect.isclass(value)):
            problems += _argument_problems(
                path, _own_docstring(value), _parameters(value, skip_first=False), fields=False
            )
    assert not problems, "\n".join(problems)


def test_every_public_class_documents_its_constructor_arguments() -> None:
    problems = []
    for path, cls in _public_classes().items():
        init = cls.__dict__.get("__init__")
        if init is None and not dataclasses.is_dataclass(cls) and not hasattr(cls, "_fields"):
            # Constructor inherited: documented where it is defined (or not valfusion's).
            continue
        if init is not None and not _defined_in_valfusion(init):
            continue
        parameters = _parameters(cls, skip_first=False)
        init_doc = inspect.cleandoc(init.__doc__) if init is not None and init.__doc__ else None
        doc = init_doc if init_doc and "Args:" in init_doc else _own_docstring(cls)
        is_record = dataclasses.is_dataclass(cls) or hasattr(cls, "_fields")
        problems += _argument_problems(path, doc, parameters, fields=is_record)
    assert not problems, "\n".join(problems)


def test_every_public_method_documents_its_arguments() -> None:
    problems = []
    for path, (_, _, attribute) in METHODS.items():
        if isinstance(attribute, property):
            continue
        function = (
            attribute.__func__ if isinstance(attribute, (staticmethod, classmethod)) else attribute
        )
        parameters = _parameters(function, skip_first=not isinstance(attribute, staticmethod))
        doc = inspect.cleandoc(function.__doc__) if function.__doc__ else None
        problems += _argument_problems(path, doc, parameters, fields=False)
    assert not problems, "\n".join(problems)


def _api_directives() -> dict[str, Path]:
    directives = {}
    for page in sorted(API_DOCS.glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^:::\s+(\S+)\s*$", line)
            if match:
                directives[match[1]] = page
    return directives


DIRECTIVES = _api_directives()


def test_every_public_name_is_on_its_subpackage_api_page() -> None:
    missing = []
    for path in PUBLIC:
        subpackage = path.split(".")[1]
        page = DIRECTIVES.get(path)
        if page is None or page.stem != subpackage:
            missing.append(f"{path} (expected on docs/api/{subpackage}.md)")
    assert not missing, f"public names missing from the API reference: {missing}"


# The command line's entry point is documented with the command it runs (docs/api/cli.md).
ENTRY_POINTS = frozenset({"valfusion.cli.main"})


def test_every_api_directive_names_a_public_object() -> None:
    unknown = [
        f"{page.name}: {identifier}"
        for identifier, page in DIRECTIVES.items()
        if identifier not in PUBLIC and identifier not in ENTRY_POINTS
    ]
    assert not unknown, f"API directives that are not public names: {unknown}"


@pytest.mark.parametrize("name", [n for n in valfusion.__all__ if n != "__version__"])
def test_top_level_name_is_documented_under_its_subpackage(name: str) -> None:
    assert f"{valfusion._EXPORTS[name]}.{name}" in DIRECTIVES
