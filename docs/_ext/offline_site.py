"""MkDocs hook: a site that works offline, on an air-gapped cluster as on a laptop.

Two parts, both run by ``mkdocs build`` (``hooks:`` in ``mkdocs.yml``):

- **Math rendered at build time.** ``pymdownx.arithmatex`` (generic mode) marks each
  formula of the pages and of the docstrings as ``<span class="arithmatex">\\(...\\)</span>``
  or ``<div class="arithmatex">\\[...\\]</div>``. :func:`render_math` replaces the TeX
  inside with MathML made by ``latex2mathml``, which browsers draw natively: no script
  and no font is fetched to show a formula. A formula it cannot convert fails the build,
  naming the page.
- **Nothing loaded from another host.** After the build, :func:`external_assets` reads
  every HTML and CSS file of the site for scripts, stylesheets, fonts, images and frames
  that would be fetched from another host (a CDN); one found fails the build. Links a
  reader may follow (``<a href>``) are not loads and are allowed.

It lives under ``docs/_ext/`` (excluded from the site). The functions need neither
MkDocs nor latex2mathml to be imported, so the tests can call them directly.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

_ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', flags=re.S
)
_DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}
_UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")

# `(https:)//host/...`, `http://...`: fetched from another host. A relative path is not.
_REMOTE = re.compile(r"^\s*(?:https?:)?//", flags=re.I)
# The attributes through which HTML fetches something by itself, per element.
_LOADING_ATTRIBUTES = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "source": ("src", "srcset"),
    "track": ("src",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "input": ("src",),
}
# <link rel=...> values that only describe the page; every other rel makes a request.
_DESCRIPTIVE_RELS = {"canonical", "alternate", "author", "license", "help", "next", "prev"}
_CSS_URL = re.compile(
    r"""url\(\s*['"]?(?P<url>[^'")\s]+)|@import\s+['"](?P<imported>[^'"]+)""", flags=re.I
)


class MathError(ValueError):
    """A formula that could not be rendered to MathML."""


def render_math(page_html: str, where: str = "page") -> str:
    """Replace every arithmatex formula of ``page_html`` with MathML rendered now.

    Args:
        page_html: A page's HTML as ``pymdownx.arithmatex`` (``generic: true``) leaves it.
        where: The page, for error messages.

    Returns:
        The HTML with each ``\\(...\\)`` / ``\\[...\\]`` replaced by an inline / block
        ``<math>`` element inside the same ``arithmatex`` span or div.

    Raises:
        MathError: A formula lacks its delimiters, latex2mathml cannot convert it, or it
            uses a command latex2mathml does not know (which it would print as text).
    """
    from latex2mathml.converter import convert

    def replace(match: re.Match[str]) -> str:
        tag = match["tag"]
        opening, closing = _DELIMITERS[tag]
        tex = html.unescape(match["tex"]).strip()
        if not (tex.startswith(opening) and tex.endswith(closing)):
            raise MathError(f"{where}: formula {tex!r} is not delimited by {opening} {closing}")
        tex = tex[len(opening) : -len(closing)].strip()
        try:
            mathml = convert(tex, display="block" if tag == "div" else "inline")
        except Exception as error:
            raise MathError(f"{where}: cannot render formula {tex!r}: {error}") from error
        if "<merror" in mathml:
            raise MathError(f"{where}: formula {tex!r} renders as an error: {mathml}")
        unknown = _UNKNOWN_COMMAND.findall(mathml)
        if unknown:  # latex2mathml prints a command it does not know as text
            raise MathError(f"{where}: formula {tex!r} uses unknown commands {unknown}")
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return _ARITHMATEX.sub(replace, page_html)


class _AssetFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "link":
            rels = set(values.get("rel", "").lower().split())
            if not rels or rels - _DESCRIPTIVE_RELS:
                self._check(values.get("href", ""))
        for name in _LOADING_ATTRIBUTES.get(tag, ()):
            if name == "srcset":
                for candidate in values.get(name, "").split(","):
                    self._check(candidate.strip().split(" ")[0])
            else:
                self._check(values.get(name, ""))
        if "style" in values:
            self.found += css_external_urls(values["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.found += css_external_urls(data)

    def _check(self, url: str) -> None:
        if _REMOTE.match(url):
            self.found.append(url.strip())


def css_external_urls(css: str) -> list[str]:
    """The URLs on another host that a stylesheet loads (``url(...)``, ``@import``)."""
    urls = (m["url"] or m["imported"] for m in _CSS_URL.finditer(css))
    return [url for url in urls if _REMOTE.match(url)]


def external_assets(text: str, kind: str = "html") -> list[str]:
    """The URLs on another host that a page (``kind="html"``) or stylesheet (``"css"``) loads.

    Args:
        text: The file's text.
        kind: ``"html"`` or ``"css"``.

    Returns:
        Every script, stylesheet, font, image, frame or media URL that a browser would
        fetch from another host on opening the file, in order of appearance; links a
        reader may follow are not included.
    """
    if kind == "css":
        return css_external_urls(text)
    if kind != "html":
        raise ValueError(f"kind must be 'html' or 'css', got {kind!r}")
    finder = _AssetFinder()
    finder.feed(text)
    finder.close()
    return finder.found


def site_external_assets(site_dir: Path) -> list[str]:
    """``"file: url"`` for every asset on another host that a built site loads."""
    found = []
    for path in sorted(site_dir.rglob("*")):
        kind = {".html": "html", ".css": "css"}.get(path.suffix)
        if kind is None or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(site_dir)}: {url}" for url in external_assets(text, kind)]
    return found


# ---------------------------------------------------------------- MkDocs events


def on_page_content(page_html: str, page: Any, **kwargs: Any) -> str:
    """Render the page's math (its docstrings' included) to MathML."""
    from mkdocs.exceptions import PluginError

    try:
        return render_math(page_html, where=page.file.src_uri)
    except MathError as error:
        raise PluginError(str(error)) from error
    except ImportError as error:
        raise PluginError(
            f"the docs render their math with latex2mathml ({error}); install the docs "
            "extra: pip install -e '.[docs]'"
        ) from error


def on_post_build(config: Any, **kwargs: Any) -> None:
    """Fail the build if any page or stylesheet loads something from another host."""
    from mkdocs.exceptions import PluginError

    found = site_external_assets(Path(config["site_dir"]))
    if found:
        raise PluginError(
            "the site loads files from other hosts, so it does not work offline:\n  "
            + "\n  ".join(found)
        )
