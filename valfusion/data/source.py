"""One string names a data source: what ``valfusion train --data SOURCE`` accepts.

Grammar::

    synthetic                       the built-in benchmark
    folder:DIR  |  DIR              a folder in the generic format (an existing folder)
    fashioniq:DIR[:CATEGORY]        CATEGORY = dress | shirt | toptee | all (default: all)
    shoes:DIR
    fashion200k:DIR
    cirr:DIR                        CIRR rc2 (option eval_split = val | test1)

Options (keyword arguments of :func:`load_source`) go to the loader:
:class:`~valfusion.data.synthetic.SyntheticBenchmark` (``num_train``, ``num_test``,
``num_distractors``, ``seed``, ``image_size``, ``compositional``, ``splits``),
:func:`~valfusion.data.folder.load_folder`, :func:`~valfusion.data.fashioniq.load_fashioniq`
(``protocol``, ``caption_mode``...), :func:`~valfusion.data.shoes.load_shoes`,
:func:`~valfusion.data.fashion200k.load_fashion200k`, :func:`~valfusion.data.cirr.load_cirr`
(``eval_split``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valfusion.data.cirr import load_cirr
from valfusion.data.errors import DataError
from valfusion.data.fashion200k import load_fashion200k
from valfusion.data.fashioniq import FASHIONIQ_CATEGORIES, load_fashioniq
from valfusion.data.folder import load_folder
from valfusion.data.shoes import load_shoes
from valfusion.data.split import RetrievalData
from valfusion.data.synthetic import SyntheticBenchmark

__all__ = ["SOURCE_KINDS", "SourceSpec", "load_source", "parse_source"]

SOURCE_KINDS: tuple[str, ...] = ("synthetic", "folder", "fashioniq", "shoes", "fashion200k", "cirr")
"""The kinds of data source :func:`load_source` understands."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string.

    Attributes:
        kind: one of :data:`SOURCE_KINDS`.
        path: the dataset folder (``None`` for ``synthetic``).
        category: FashionIQ category (``"all"`` by default), else ``None``.
    """

    kind: str
    path: Path | None = None
    category: str | None = None


def parse_source(spec: str) -> SourceSpec:
    """Parse a source string (grammar in the module docstring).

    Args:
        spec: e.g. ``"synthetic"``, ``"fashioniq:/data/fiq:dress"``, ``"./my_triplets"``.

    Returns:
        The parsed :class:`SourceSpec`.

    Raises:
        ValueError: an empty path, or a string that is none of the forms (the message
            lists them).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"source: expected a data source string, got {spec!r}")
    if spec == "synthetic":
        return SourceSpec("synthetic")
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCE_KINDS and kind != "synthetic":
        if not rest:
            raise ValueError(f"source: {kind}: needs a folder, e.g. '{kind}:/data/{kind}'")
        if kind == "fashioniq":
            path, sep, category = rest.rpartition(":")
            if sep and category in (*FASHIONIQ_CATEGORIES, "all"):
                return SourceSpec(kind, Path(path), category)
            return SourceSpec(kind, Path(rest), "all")
        return SourceSpec(kind, Path(rest))
    if Path(spec).is_dir():
        return SourceSpec("folder", Path(spec))
    raise ValueError(
        f"source: {spec!r} is not a folder and not one of: synthetic, folder:DIR, "
        "fashioniq:DIR[:dress|shirt|toptee|all], shoes:DIR, fashion200k:DIR, cirr:DIR"
    )


def _synthetic(*, splits: tuple[str, ...] = ("train", "test"), **options: Any) -> RetrievalData:
    return SyntheticBenchmark(**options).data(splits)


_LOADERS: dict[str, Callable[..., RetrievalData]] = {
    "synthetic": _synthetic,
    "folder": load_folder,
    "fashioniq": load_fashioniq,
    "shoes": load_shoes,
    "fashion200k": load_fashion200k,
    "cirr": load_cirr,
}


def _accepted(kind: str) -> list[str]:
    if kind == "synthetic":
        names = inspect.signature(SyntheticBenchmark).parameters
        return ["splits", *names]
    parameters = inspect.signature(_LOADERS[kind]).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def load_source(spec: str, **options: Any) -> RetrievalData:
    """Load the data a source string names.

    Args:
        spec: the source (grammar in the module docstring).
        **options: keyword options of the source's loader, e.g. ``splits=("test",)``,
            ``image_size=128``, ``drop_missing_images=True`` (drops triplets whose images
            are missing or unreadable), ``protocol="original"``; for image folders also
            ``resize="pad"`` and ``transform=`` (a ``PIL.Image -> (3, H, W)`` tensor
            callable such as a ``torchvision.transforms.v2.Compose``; Python only, not a
            CLI option).

    Returns:
        The loaded :class:`RetrievalData`.

    Raises:
        ValueError: a malformed source string or an option the source does not take.
        DataError: the data are bad or missing (``file:line`` in the message).
    """
    parsed = parse_source(spec)
    accepted = _accepted(parsed.kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"options: {parsed.kind} does not take {', '.join(unknown)} "
            f"(it takes: {', '.join(accepted)})"
        )
    if parsed.path is not None and not parsed.path.is_dir():
        raise DataError(f"{parsed.path}: not a folder (source {spec!r})")
    if parsed.kind == "synthetic":
        return _synthetic(**options)
    if parsed.kind == "fashioniq":
        assert parsed.path is not None and parsed.category is not None  # parse_source sets both
        return load_fashioniq(parsed.path, parsed.category, **options)
    return _LOADERS[parsed.kind](parsed.path, **options)
