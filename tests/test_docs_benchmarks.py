"""The benchmark pages: a plain summary first, comparisons first in every table, the pictures.

- Every page under ``docs/benchmarks/`` and ``docs/benchmarks.md`` opens with its title and
  a short plain-language summary (what was measured, on what machine, what it means, what
  is not measured yet) before any table or included results file.
- Every table of ``benchmarks/results/`` that compares puts the comparisons (ratios,
  fractions of the ceiling) right after the row's name and before the absolute figures,
  and has the layout the benchmark writers produce now, so a rerun keeps it.
- The demo page shows the demo's three pictures, small PNGs redrawn by one command.
"""

from __future__ import annotations

import importlib.util
import io
import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [DOCS / "benchmarks.md", *sorted((DOCS / "benchmarks").rglob("*.md"))]
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?P<lines>:[-0-9:,]*)?"\s*$', flags=re.M)
# A column that compares: a ratio, a speed-up, a fraction of the ceiling or a share.
COMPARISON = re.compile(r" / |^/ |speed-up|x ceiling|% ceil|roofline|share", flags=re.I)
# A column of absolute figures: a time, a size, FLOPs, a throughput.
ABSOLUTE = re.compile(r"\((ms|s|MiB|GFLOP/s)\)|GFLOP|samples/s")


def _summary(page: Path) -> str:
    """The prose between the page's title and its first table, include or section."""
    lines = page.read_text().split("\n")
    assert lines[0].startswith("# "), f"{page.relative_to(ROOT)} does not start with a title"
    prose = []
    for line in lines[1:]:
        if line.startswith(("|", "--8<--", "#", "```")):
            break
        prose.append(line)
    return " ".join(prose)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_benchmark_page_opens_with_a_plain_summary(page):
    summary = _summary(page)
    words = len(re.findall(r"[A-Za-z]+", summary))
    assert 60 <= words <= 400, f"summary of {words} words"
    assert re.search(r"\b(CPU|H100|GPU)\b", summary), "the summary names the machine"
    assert re.search(r"[Nn]ot measured", summary), "the summary says what is not measured yet"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_benchmark_page_has_one_title(page):
    """An included results file comes without its own title: the page's is the one."""
    text = page.read_text()
    titles = len(re.findall(r"^# ", text, flags=re.M))
    for match in _SNIPPET.finditer(text):
        included = (ROOT / match["path"]).read_text().split("\n")
        start = int(match["lines"].split(":")[1]) if match["lines"] else 1
        titles += sum(line.startswith("# ") for line in included[start - 1 :])
    assert titles == 1


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    lines, tables, i = text.split("\n"), [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = lines[i][2:-2].split(" | ")
            j, rows = i + 2, []
            while j < len(lines) and lines[j].startswith("| "):
                rows.append(lines[j][2:-2].split(" | "))
                j += 1
            tables.append((header, rows))
            i = j
        else:
            i += 1
    return tables


def _comparing_tables() -> list[tuple[str, list[str]]]:
    return [(str(path.relative_to(ROOT)), header)
            for path in sorted(RESULTS.rglob("*.md"))
            for header, _ in _tables(path.read_text())
            if any(COMPARISON.search(h) for h in header)]


def test_results_tables_put_the_comparisons_first():
    tables = _comparing_tables()
    assert len(tables) >= 14
    for where, header in tables:
        comparisons = [i for i, h in enumerate(header) if COMPARISON.search(h)]
        absolute = [i for i, h in enumerate(header) if ABSOLUTE.search(h)]
        assert comparisons[0] <= 3, (where, header)  # after at most the row's name columns
        assert not absolute or max(comparisons) < min(absolute), (where, header)


def _harness_layouts() -> set[tuple[str, ...]]:
    from benchmarks import bench_composite, bench_losses, bench_recall, bench_train_step

    return {
        bench_composite.LEVEL_COLUMNS, bench_composite.HIGH_RES_COLUMNS,
        bench_composite.MEMORY_COLUMNS, bench_composite.PART_COLUMNS,
        bench_composite.SWEEP_COLUMNS, bench_composite.LIMIT_COLUMNS,
        bench_composite.ALLOCATOR_COLUMNS, bench_losses.COLUMNS, bench_recall.TIMING_COLUMNS,
        bench_recall.MEMORY_COLUMNS, bench_train_step.COLUMNS,
    }


def test_results_tables_have_the_layout_the_benchmarks_write():
    layouts = _harness_layouts()
    assert [(where, header) for where, header in _comparing_tables()
            if tuple(header) not in layouts] == []
    for layout in layouts:  # and the writers' layouts follow the same rule
        comparisons = [i for i, h in enumerate(layout) if COMPARISON.search(h)]
        absolute = [i for i, h in enumerate(layout) if ABSOLUTE.search(h)]
        assert comparisons and comparisons[0] <= 3, layout
        assert not absolute or max(comparisons) < min(absolute), layout


def test_markdown_table_puts_a_mapping_row_under_its_columns():
    from benchmarks._harness import markdown_table

    table = markdown_table(("name", "ratio", "time (ms)"), [
        {"time (ms)": 12.5, "name": "a", "ratio": "1.50"},
        {"name": "sum", "ratio": "2.00"},
        ("b", "0.90", 1234.0),
    ])
    assert table.split("\n")[2:5] == ["| a | 1.50 | 12.5 |", "| sum | 2.00 |  |",
                                      "| b | 0.90 | 1,234 |"]
    with pytest.raises(KeyError, match="not in the table: \\['speed'\\]"):
        markdown_table(("name",), [{"name": "a", "speed": 1.0}])


# ---------------------------------------------------------------- the demo's pictures

PICTURES = ("learning_curves.png", "attention_maps.png", "top_results.png")
PICTURE_LIMIT = 200_000


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_demo_page_shows_the_demo_pictures():
    page = (DOCS / "benchmarks" / "demo.md").read_text()
    for name in PICTURES:
        assert f"](../assets/demo/{name})" in page, name
        path = DOCS / "assets" / "demo" / name
        width, height = _png_size(path)
        assert width >= 400 and height >= 300, (name, width, height)
        assert path.stat().st_size <= PICTURE_LIMIT, (name, path.stat().st_size)
    assert "```bash\npython docs/_ext/demo_pictures.py\n```" in page  # how to redraw them
    how_to = (DOCS / "how-to" / "attention-maps.md").read_text()
    assert "](../assets/demo/attention_maps.png)" in how_to


def _pictures_script():
    spec = importlib.util.spec_from_file_location(
        "demo_pictures", DOCS / "_ext" / "demo_pictures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pictures_script_keeps_the_pictures_the_demo_writes():
    script = _pictures_script()
    assert script.PICTURES == PICTURES and script.LIMIT == PICTURE_LIMIT
    demo_source = (ROOT / "valfusion" / "engine" / "demo.py").read_text()
    for name in PICTURES:
        assert f'out / "{name}"' in demo_source, name


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_fit_png_keeps_a_picture_of_few_colours_exactly():
    image_module = importlib.import_module("PIL.Image")
    torch = importlib.import_module("torch")
    generator = torch.Generator().manual_seed(0)
    colours = torch.randint(0, 256, (40, 3), generator=generator, dtype=torch.uint8)
    index = torch.randint(0, 40, (60, 80), generator=generator)
    pixels = colours[index].repeat_interleave(6, 0).repeat_interleave(6, 1)  # (360, 480, 3)
    original = image_module.fromarray(pixels.numpy(), "RGB")
    png, how = _pictures_script().fit_png(_png(original))
    decoded = image_module.open(io.BytesIO(png))
    assert decoded.mode == "P" and decoded.size == (480, 360)
    # 40 colours fit in any palette tried: the picture is stored without loss.
    assert decoded.convert("RGB").tobytes() == original.tobytes()
    assert "mean difference 0.0" in how


def _noisy_canvases(size: tuple[int, int]):
    """Six 64 x 64 noisy canvases of one colour each, drawn at ``size`` (bilinear), like
    the demo's renders in its pictures: noise that compresses badly."""
    image_module = importlib.import_module("PIL.Image")
    torch = importlib.import_module("torch")
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (6, 1, 1, 3), generator=generator).float()
    noise = 12 * torch.randn(6, 64, 64, 3, generator=generator)
    canvases = (base + noise).clamp(0, 255).to(torch.uint8)
    grid = torch.cat([torch.cat(list(canvases[:3]), 1), torch.cat(list(canvases[3:]), 1)], 0)
    small = image_module.fromarray(grid.numpy(), "RGB")  # 192 x 128
    return small.resize(size, image_module.Resampling.BILINEAR)


def test_fit_png_brings_a_noisy_picture_under_the_limit():
    image_module = importlib.import_module("PIL.Image")
    original = _noisy_canvases((300, 200))
    limit = 40_000
    assert len(_png(original)) > 2 * limit
    png, _ = _pictures_script().fit_png(_png(original), limit=limit)
    assert len(png) <= limit
    assert image_module.open(io.BytesIO(png)).size == original.size


def test_fit_png_says_when_a_picture_cannot_fit():
    with pytest.raises(ValueError, match="does not fit in limit=1000 bytes"):
        _pictures_script().fit_png(_png(_noisy_canvases((120, 80))), limit=1000)
