"""The docs site works offline: no script, stylesheet or font from a CDN; math rendered at build.

The hook ``docs/_ext/offline_site.py`` renders the math to MathML and fails the build when
a page or stylesheet loads anything from another host. These tests check the site's
configuration and sources, the hook's two halves on real Markdown and HTML, and (where the
docs extra is installed) a whole ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOK = "docs/_ext/offline_site.py"
# Hosts that serve scripts, stylesheets or fonts to other sites.
CDN = re.compile(
    r"unpkg\.com|cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com|fonts\.googleapis\.com|"
    r"fonts\.gstatic\.com|polyfill\.io|cdn\.mathjax\.org|ajax\.googleapis\.com|"
    r"use\.fontawesome\.com|code\.jquery\.com",
    flags=re.I,
)


def _load_hook():
    spec = importlib.util.spec_from_file_location("offline_site", ROOT / HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


offline_site = _load_hook()


def _mkdocs_config() -> dict:
    yaml = importlib.import_module("yaml")

    class Loader(yaml.SafeLoader):
        pass

    # MkDocs' own tags (`!relative`, `!ENV`): their values do not matter here.
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_site_config_loads_theme_fonts_and_scripts_from_this_site_only():
    config = _mkdocs_config()
    assert config["theme"].get("font") is False, "Material fetches Google Fonts unless font: false"
    for key in ("extra_javascript", "extra_css"):
        for entry in config.get(key, []):
            path = entry if isinstance(entry, str) else entry["path"]
            assert not re.match(r"(https?:)?//", path), f"{key} loads {path} from another host"
            assert (DOCS / path).is_file(), f"{key}: {path} is not under docs/"
    assert HOOK in config.get("hooks", []), "the hook that renders math and checks assets"


def test_docs_sources_name_no_cdn():
    sources = [ROOT / "mkdocs.yml", *(p for p in DOCS.rglob("*") if p.is_file()
                                      and p.suffix in {".md", ".js", ".css", ".html", ".yml"})]
    found = [f"{p.relative_to(ROOT)}: {m[0]}" for p in sources
             for m in CDN.finditer(p.read_text(encoding="utf-8"))]
    assert found == []


# A built page's head as Material renders it with its default font and a CDN MathJax,
# plus what a page may legitimately contain.
_PAGE = """<!doctype html><html><head>
<link rel="canonical" href="https://example.org/valfusion/">
<link rel="icon" href="../assets/images/favicon.png">
<link rel="stylesheet" href="../assets/stylesheets/main.css">
<link href="https://fonts.gstatic.com" rel="preconnect" crossorigin>
<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto:300,400">
<style>:root{--md-text-font:"Roboto"}@font-face{src:url(//fonts.example.net/r.woff2)}</style>
</head><body>
<a href="https://pytorch.org/get-started/locally/">PyTorch</a>
<img src="../assets/demo/attention_maps.png" alt="">
<img srcset="small.png 1x, https://img.example.net/big.png 2x" alt="">
<div style="background: url('https://img.example.net/bg.png')"></div>
<script src="../assets/javascripts/bundle.js"></script>
<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script>
</body></html>"""


def test_external_assets_are_what_a_browser_would_fetch_from_other_hosts():
    assert offline_site.external_assets(_PAGE) == [
        "https://fonts.gstatic.com",
        "https://fonts.googleapis.com/css?family=Roboto:300,400",
        "//fonts.example.net/r.woff2",
        "https://img.example.net/big.png",
        "https://img.example.net/bg.png",
        "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js",
    ]


def test_external_assets_of_a_stylesheet():
    css = ('@import "https://fonts.googleapis.com/css?family=Roboto";\n'
           '@font-face{src:url("../fonts/local.woff2") format("woff2"),'
           "url(https://fonts.gstatic.com/s/r.woff2)}")
    assert offline_site.external_assets(css, kind="css") == [
        "https://fonts.googleapis.com/css?family=Roboto",
        "https://fonts.gstatic.com/s/r.woff2",
    ]
    with pytest.raises(ValueError, match="kind must be 'html' or 'css', got 'js'"):
        offline_site.external_assets("", kind="js")


def test_site_external_assets_names_the_file(tmp_path):
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "index.html").write_text(_PAGE)
    (tmp_path / "ok.html").write_text('<a href="https://pytorch.org">x</a>')
    found = offline_site.site_external_assets(tmp_path)
    assert found[0] == "page/index.html: https://fonts.gstatic.com"
    assert len(found) == 6 and all(f.startswith("page/index.html: ") for f in found)


def _arithmatex_html(markdown_text: str) -> str:
    """``markdown_text`` converted as the site converts it (arithmatex in generic mode)."""
    markdown = importlib.import_module("markdown")
    importlib.import_module("pymdownx")
    return markdown.markdown(markdown_text, extensions=["pymdownx.arithmatex"],
                             extension_configs={"pymdownx.arithmatex": {"generic": True}})


def _math_elements(page_html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<math\b.*?</math>", page_html, flags=re.S)]


def test_math_is_rendered_to_mathml_at_build_time():
    importlib.import_module("latex2mathml")
    page = _arithmatex_html(
        "A rank $r < K$ counts.\n\n$$\n\\mathrm{R@K} = \\frac{1}{Q} \\sum_q [r_q < K]\n$$\n"
    )
    assert "\\(" in page and "\\[" in page  # what the browser would have to typeset itself
    rendered = offline_site.render_math(page, where="concepts/evaluation.md")
    assert "\\(" not in rendered and "\\[" not in rendered
    inline, block = _math_elements(rendered)
    assert inline.get("display") == "inline" and block.get("display") == "block"
    ns = "{http://www.w3.org/1998/Math/MathML}"
    # The escaped `<` of the page became the operator `<` again, in both formulas.
    assert [mo.text for mo in inline.iter(f"{ns}mo")] == ["<"]
    assert "<" in [mo.text for mo in block.iter(f"{ns}mo")]
    assert block.find(f".//{ns}mfrac") is not None
    # Each formula keeps its arithmatex wrapper, which the theme styles.
    assert rendered.count('<span class="arithmatex"><math') == 1
    assert rendered.count('<div class="arithmatex"><math') == 1


@pytest.mark.parametrize(
    ("tex", "message"),
    [("\\sqrt", "cannot render formula"), ("x^", "cannot render formula"),
     ("\\softmax(x)", "uses unknown commands \\['\\\\\\\\softmax'\\]")],
)
def test_a_formula_that_cannot_be_rendered_names_its_page(tex, message):
    importlib.import_module("latex2mathml")
    page = _arithmatex_html(f"Before ${tex}$ after.\n")
    with pytest.raises(offline_site.MathError, match=f"^api/losses.md: .*{message}"):
        offline_site.render_math(page, where="api/losses.md")


@pytest.mark.slow
def test_built_site_loads_nothing_from_other_hosts(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "latex2mathml"):
        importlib.import_module(module)
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert offline_site.site_external_assets(site) == []
    pages = [p for p in site.rglob("*.html")]
    assert [p for p in pages if CDN.search(p.read_text())] == []
    method = (site / "concepts" / "method" / "index.html").read_text()
    assert len(_math_elements(method)) >= 20
    assert not re.search(r'class="arithmatex">\\[(\[]', method)
    losses = (site / "api" / "losses" / "index.html").read_text()  # math from docstrings
    assert re.search(r'<div class="arithmatex"><math [^>]*display="block"', losses)
