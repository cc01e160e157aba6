"""Regenerate the demo's pictures shown on the docs site, in ``docs/assets/demo/``.

From the repository root::

    python docs/_ext/demo_pictures.py              # runs `valfusion demo --quick` first
    python docs/_ext/demo_pictures.py --from DIR   # the pictures of a demo already run

The first form runs ``valfusion demo --quick --no-progress`` in a temporary folder (about
half a minute to a minute on two CPU cores; the demo extra is needed for the pictures)
and keeps its three pictures: the learning curves, the joint-attention maps and the top
results. Each is stored as a palette PNG of at most ``LIMIT`` bytes (256 colours at most,
as close to the original as fits; see :func:`fit_png`), so the repository and the site
stay small.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "assets" / "demo"
#: The pictures ``valfusion demo`` writes into its output folder, in page order.
PICTURES = ("learning_curves.png", "attention_maps.png", "top_results.png")
#: Largest file size kept in the repository, in bytes.
LIMIT = 200_000
_PALETTES = (256, 192, 128, 96, 64, 48, 32)


def fit_png(png: bytes, limit: int = LIMIT) -> tuple[bytes, str]:
    """``png`` re-encoded as a palette PNG of at most ``limit`` bytes, as close as fits.

    Each of Pillow's three quantisers (median cut, maximum coverage, fast octree) is tried
    with the most colours of ``_PALETTES`` whose file fits; the candidate whose pixels
    differ least from the original (mean absolute difference per channel) is kept. No
    dithering: it adds noise that compresses badly.

    Args:
        png: Any PNG file's bytes.
        limit: Largest size of the result in bytes.

    Returns:
        The new file's bytes (same size in pixels) and how it was made, e.g.
        ``"fast octree, 256 colours, mean difference 3.3 / 255"``.

    Raises:
        ValueError: No quantiser fits the picture under ``limit`` bytes, even with the
            fewest colours tried.
    """
    from PIL import Image, ImageChops, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    methods = {
        "median cut": Image.Quantize.MEDIANCUT,
        "maximum coverage": Image.Quantize.MAXCOVERAGE,
        "fast octree": Image.Quantize.FASTOCTREE,
    }
    best: tuple[float, bytes, str] | None = None
    for name, method in methods.items():
        for colours in _PALETTES:
            paletted = image.quantize(colors=colours, method=method, dither=Image.Dither.NONE)
            buffer = io.BytesIO()
            paletted.save(buffer, format="PNG", optimize=True)
            if buffer.tell() > limit:
                continue
            difference = ImageChops.difference(image, paletted.convert("RGB"))
            error = sum(ImageStat.Stat(difference).mean) / 3
            if best is None or error < best[0]:
                how = f"{name}, {colours} colours, mean difference {error:.1f} / 255"
                best = (error, buffer.getvalue(), how)
            break  # fewer colours of the same quantiser only lose detail
    if best is None:
        raise ValueError(
            f"picture does not fit in limit={limit} bytes with any quantiser and "
            f"{_PALETTES[-1]} colours or more"
        )
    return best[1], best[2]


def run_quick_demo(out: Path) -> None:
    """Run ``valfusion demo --quick`` into ``out`` (this interpreter, this checkout)."""
    command = [sys.executable, "-m", "valfusion", "demo", "--quick", "--no-progress",
               "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="a `valfusion demo` output folder (default: run the quick demo)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from valfusion.engine.io import atomic_write_bytes

    with tempfile.TemporaryDirectory() as scratch:
        source = args.source
        if source is None:
            source = Path(scratch) / "demo"
            run_quick_demo(source)
        missing = [name for name in PICTURES if not (source / name).is_file()]
        if missing:
            parser.error(f"--from: {source} lacks {', '.join(missing)}")
        OUT.mkdir(parents=True, exist_ok=True)
        for name in PICTURES:
            png, how = fit_png((source / name).read_bytes())
            path = atomic_write_bytes(OUT / name, png)
            print(f"{path.relative_to(ROOT)}: {len(png):,} bytes ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
