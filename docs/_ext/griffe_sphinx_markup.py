"""Griffe extension: render the reST markup found in valfusion's docstrings as Markdown.

valfusion's docstrings are Google style but cross-reference with Sphinx roles
(``:class:`CompositeTransformer```) and write display math as ``.. math::`` blocks.
mkdocstrings would print both literally. This extension rewrites them, before the
docstrings are parsed:

- a role becomes an *optional* autorefs cross-reference, resolved in the docstring's
  own scope (``:meth:`official``` inside ``CompositeTransformer`` links to
  ``CompositeTransformer.official``). Optional means an unresolvable target (a torch
  function, say) is shown as code without a warning, so ``mkdocs build --strict``
  never fails because of one;
- a ``.. math::`` block becomes a ``$$ ... $$`` block for ``pymdownx.arithmatex``;
- a doctest (``>>>`` lines and their output, up to a blank line) becomes a fenced
  ``pycon`` code block wherever it appears (griffe only does that in a section titled
  ``Examples:``; ``Example:`` is an admonition).

It lives under ``docs/_ext/`` (excluded from the site) and is loaded by the
mkdocstrings handler (``extensions:`` in ``mkdocs.yml``).
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|obj|exc|const|prop):"
    r"`(?:(?P<title>[^`<]*?)\s*<(?P<explicit>~?[\w.]+)>|(?P<tilde>~)?(?P<target>[\w.]+?)(?P<call>\(\))?)`"
)


_SECTION_TITLE = re.compile(r"^\s*\w[\w ]*:\s*$")


def _resolve(obj: griffe.Object | griffe.Alias, target: str) -> str:
    """Full path of ``target`` as seen from ``obj``'s scope (the target itself if unknown)."""
    first, dot, rest = target.partition(".")
    try:
        base = obj.resolve(first)
    except Exception:
        return target
    return f"{base}{dot}{rest}"


def _roles_to_refs(text: str, obj: griffe.Object | griffe.Alias) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["explicit"]:  # :role:`title <target>`
            target = match["explicit"].lstrip("~")
            shown = match["title"] or target
        else:
            target = match["target"]
            shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = html.escape(_resolve(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    return _ROLE.sub(replace, text)


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped != ".. math::":
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        i += 1
        body: list[str] = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        math = textwrap.dedent("\n".join(body)).strip("\n")
        out += [f"{indent}$$", *(f"{indent}{line}" for line in math.split("\n")), f"{indent}$$", ""]
    return "\n".join(out)


def _doctest_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        # A blank line before the fence, except right under a section title ("Example:"),
        # which must stay directly above its indented block to remain a section.
        if out and out[-1].strip() and not _SECTION_TITLE.match(out[-1]):
            out.append("")
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out += [f"{indent}```", ""]
    return "\n".join(out)


class SphinxMarkup(griffe.Extension):
    """Rewrite Sphinx roles and ``.. math::`` blocks in every docstring of the package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            value = obj.docstring.value
            value = _doctest_blocks(_math_blocks(value))
            obj.docstring.value = _roles_to_refs(value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)
