"""Verifying image files before training: each file decoded once, in parallel, and remembered.

Finding that an image exists is not enough: a truncated download, an empty file, an
HTML error page saved as ``.jpg`` or a header claiming 30000 x 30000 pixels all pass an
existence check and then stop training part-way, or fail in the final evaluation.
:func:`verify_images` decodes every file completely with Pillow (as training will, see
:func:`~valfusion.data.images.open_rgb`) and refuses images larger than
:data:`~valfusion.data.images.MAX_IMAGE_PIXELS`.

Decoding is the cost, so it runs in threads (Pillow releases the GIL while it decodes)
and its results are cached: a file that decoded once is not decoded again while its
resolved path, size and modification time (``st_mtime_ns``) stay the same. The cache is
one JSON file, ``verified-images.json``, in :func:`image_cache_dir` (``$VALFUSION_CACHE_DIR``,
else ``$XDG_CACHE_HOME/valfusion``, else ``~/.cache/valfusion``); ``VALFUSION_CACHE_DIR=off``
turns it off. Only images that decoded are cached, so a broken file is checked again on
every run until it is fixed.

:func:`check_split_images` is what :func:`~valfusion.data.build_split` runs on a split:
it resolves every id (refusing paths that lead outside the image folder), notices ids
that name the same file, and verifies each file once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valfusion._io import CACHE_ENV, atomic_write, cache_dir
from valfusion.data.errors import DataError
from valfusion.data.images import (
    MAX_IMAGE_PIXELS,
    ImageLoader,
    open_rgb,
    quiet_pillow_size_warnings,
)

__all__ = [
    "CACHE_ENV",
    "ImageCheck",
    "check_split_images",
    "image_cache_dir",
    "verify_images",
]

_CACHE_FILE = "verified-images.json"
_CACHE_VERSION = 1
_ANNOUNCE_FROM = 1000  # files to decode before a progress line is worth printing


def image_cache_dir() -> Path | None:
    """The folder of the image verification cache, from the environment.

    ``$VALFUSION_CACHE_DIR`` when set (``off`` or empty: no cache), else
    ``$XDG_CACHE_HOME/valfusion``, else ``~/.cache/valfusion``.

    Returns:
        The folder (perhaps not created yet), or ``None`` when the cache is off.
    """
    return cache_dir()


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(32, 2 * (cpus or 1))  # twice the cores: reading files also waits on the disk


def _read_cache(path: Path) -> dict[str, list[int]]:
    """``{resolved path: [size, mtime_ns, width, height]}``; an unreadable cache is empty."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != _CACHE_VERSION:
        return {}
    images = raw.get("images")
    if not isinstance(images, dict):
        return {}
    return {
        key: entry
        for key, entry in images.items()
        if isinstance(entry, list) and len(entry) == 4 and all(type(v) is int for v in entry)
    }


def _write_cache(path: Path, entries: Mapping[str, list[int]]) -> None:
    merged = _read_cache(path)  # keep what another run added meanwhile
    merged.update(entries)
    text = json.dumps({"version": _CACHE_VERSION, "images": merged}, separators=(",", ":"))
    try:
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as err:  # a read-only home must not stop training
        print(
            f"valfusion: could not write the image cache {path} ({err}); "
            f"set {CACHE_ENV} to a writable folder, or to 'off'",
            file=sys.stderr,
        )


def _too_large(path: str, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{path}: image of {width} x {height} = {width * height:,} pixels is larger than "
        f"the maximum of {max_pixels:,} pixels (max_pixels)"
    )


def _decode(path: str, max_pixels: int) -> tuple[int, int] | str:
    """``(width, height)`` of a file that decodes, else the reason it does not."""
    try:
        return open_rgb(path, max_pixels).size
    except DataError as err:
        return str(err)


def _check_arguments(max_pixels: int, workers: int | None) -> None:
    for name, value in (("max_pixels", max_pixels), ("workers", workers)):
        if value is not None and (type(value) is not int or value <= 0):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _verify_resolved(
    paths: Iterable[str], max_pixels: int, cache: bool, workers: int | None
) -> dict[str, str]:
    """``{resolved path: reason}`` for the resolved ``paths`` that fail (see :func:`verify_images`)."""
    cache_dir = image_cache_dir() if cache else None
    cache_path = None if cache_dir is None else cache_dir / _CACHE_FILE
    known = {} if cache_path is None else _read_cache(cache_path)

    verdicts: dict[str, str] = {}  # resolved path -> reason, for the files that fail
    todo: dict[str, list[int]] = {}  # resolved path -> [size, mtime_ns] before decoding
    unchanged = 0
    for resolved in dict.fromkeys(paths):
        try:
            stat = os.stat(resolved)
        except OSError as err:
            verdicts[resolved] = f"{resolved}: image file not found ({err.strerror})"
            continue
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = known.get(resolved)
        if entry is None or entry[:2] != stamp:
            todo[resolved] = stamp
            continue
        unchanged += 1
        width, height = entry[2:]
        if width * height > max_pixels:
            verdicts[resolved] = _too_large(resolved, width, height, max_pixels)

    if todo:
        announce = len(todo) >= _ANNOUNCE_FROM
        if announce:
            print(
                f"valfusion: verifying {len(todo):,} images ({unchanged:,} unchanged since "
                "they were last verified)",
                file=sys.stderr,
            )
        start = time.perf_counter()
        with quiet_pillow_size_warnings(), ThreadPoolExecutor(workers or _default_workers()) as pool:
            decoded = list(pool.map(lambda p: _decode(p, max_pixels), todo))
        new_entries = {}
        for resolved, result in zip(todo, decoded):
            if isinstance(result, str):
                verdicts[resolved] = result
            else:
                new_entries[resolved] = [*todo[resolved], *result]
        if announce:
            elapsed = time.perf_counter() - start
            print(f"valfusion: verified {len(todo):,} images in {elapsed:.1f} s", file=sys.stderr)
        if cache_path is not None and new_entries:
            _write_cache(cache_path, new_entries)
    return verdicts


def verify_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    cache: bool = True,
    workers: int | None = None,
) -> dict[Path, str]:
    """Decode every image file completely; say which cannot be used, and why.

    A file fails when it is missing, cannot be identified or decoded (empty, truncated,
    corrupt, not an image) or has more than ``max_pixels`` pixels. Files are decoded in
    ``workers`` threads. With ``cache``, a file whose resolved path, size and
    ``st_mtime_ns`` match an earlier successful check is not decoded again (see
    :func:`image_cache_dir`).

    Args:
        paths: the image files.
        max_pixels: largest ``width * height`` accepted.
        cache: use and update the verification cache.
        workers: decoding threads (default: twice the usable cores, at most 32).

    Returns:
        ``{path: reason}`` for every file that fails (keys as given, as ``Path``);
        empty when all are good.

    Raises:
        ValueError: ``max_pixels`` or ``workers`` is not a positive int.
    """
    _check_arguments(max_pixels, workers)
    real = {Path(path): os.path.realpath(path) for path in paths}
    bad = _verify_resolved(real.values(), max_pixels, cache, workers)
    return {path: bad[resolved] for path, resolved in real.items() if resolved in bad}


@dataclass(frozen=True)
class ImageCheck:
    """What checking the images of a split found (ids in the order they were given).

    Attributes:
        missing: ids with no file.
        unreadable: ``{id: reason}`` for files that cannot be decoded or are too large.
        outside: ``{id: reason}`` for ids that lead outside the image folder.
        aliases: ``{id: earlier id}`` for ids naming a file an earlier id already names
            (``images/../images/a.png`` and ``images/a.png``, or a link and its target).
    """

    missing: tuple[str, ...] = ()
    unreadable: Mapping[str, str] = field(default_factory=dict)
    outside: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)


def check_split_images(
    images: ImageLoader,
    image_ids: Iterable[str],
    *,
    cache: bool = True,
    workers: int | None = None,
) -> ImageCheck:
    """Resolve, de-duplicate and verify the images a split uses.

    A loader that reads files exposes ``resolve(id) -> Path | None`` (raising
    :class:`DataError` for an id that leads outside its folder) and ``max_pixels``, as
    :class:`~valfusion.data.ImageFiles` does; each of its files is verified once with
    :func:`verify_images`. Any other loader (the synthetic benchmark renders in memory) is
    only asked ``id in images``: nothing is decoded or rendered.

    Args:
        images: the split's image loader.
        image_ids: the ids the split uses.
        cache: use the verification cache.
        workers: decoding threads (default: see :func:`verify_images`).

    Returns:
        The :class:`ImageCheck`.
    """
    ids = list(dict.fromkeys(image_ids))
    resolve: Any = getattr(images, "resolve", None)
    if resolve is None:
        return ImageCheck(missing=tuple(i for i in ids if i not in images))
    missing: list[str] = []
    outside: dict[str, str] = {}
    first_of: dict[Path, str] = {}  # resolved file -> the first id naming it
    aliases: dict[str, str] = {}
    for image_id in ids:
        try:
            path = resolve(image_id)
        except DataError as err:
            outside[image_id] = str(err)
            continue
        if path is None:
            missing.append(image_id)
            continue
        first = first_of.setdefault(path, image_id)
        if first != image_id:
            aliases[image_id] = first
    max_pixels = getattr(images, "max_pixels", MAX_IMAGE_PIXELS)
    _check_arguments(max_pixels, workers)
    bad = _verify_resolved(map(str, first_of), max_pixels, cache, workers)
    unreadable = {first_of[Path(path)]: reason for path, reason in bad.items()}
    return ImageCheck(tuple(missing), unreadable, outside, aliases)
