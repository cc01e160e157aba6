"""The generic folder format: triplets a user (or a test) can write by hand.

Layout (every PATH relative to ``DIR`` and inside it, any image format Pillow reads)::

    DIR/train.jsonl      one object per line: {"reference": PATH, "text": STR, "target": PATH}
                         ("text" must not be empty or only whitespace)
    DIR/test.jsonl       same keys; "target" may be a list of paths, all correct
    DIR/gallery.txt      optional, one PATH per line; default: the union of the test
                         references and targets (the "val" protocol)
    DIR/side_info.json   optional: {PATH: "text about that image"}

:func:`load_folder` reads it (checking every line and image before training) and
:func:`write_folder` writes it from triplets and images. A PATH is normalised
(``images/./a.png`` and ``images/../images/a.png`` are ``images/a.png``, so each file is
one image) and may not lead out of ``DIR``: absolute paths, ``..`` climbing out and
symbolic links to files elsewhere are refused with the line that names them.
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from valfusion._io import atomic_write
from valfusion.data._loader_args import check_root_and_splits
from valfusion.data.annotations import (
    Record,
    check_caption,
    read_json_entries,
    read_jsonl,
    read_lines,
)
from valfusion.data.errors import DataError
from valfusion.data.images import ImageFiles, ImageTransform, ResizeMode, size_record
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["load_folder", "write_folder"]


def _inside_path(value: str) -> str | None:
    """``value`` normalised (``a/./b``, ``a/../a/b`` -> ``a/b``), or ``None`` if it leads out."""
    if value.startswith("/") or os.path.isabs(value):  # absolute on POSIX or on this system
        return None
    normal = posixpath.normpath(value)
    return None if normal == ".." or normal.startswith("../") else normal


def _path_field(record: Record, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{record.source}: {key!r} must be a non-empty path string, got {value!r}")
    normal = _inside_path(value)
    if normal is None:
        raise DataError(
            f"{record.source}: {key!r} must be relative to the folder and stay inside it, "
            f"got {value!r}"
        )
    return normal


def _triplet(record: Record) -> Triplet:
    fields = record.value
    for key in ("reference", "text", "target"):
        if key not in fields:
            raise DataError(f"{record.source}: missing key {key!r} (keys: {sorted(fields)})")
    check_caption(fields["text"], record.source, "text")
    target = fields["target"]
    targets = [target] if isinstance(target, str) else target
    if not isinstance(targets, list) or not targets:
        raise DataError(
            f"{record.source}: 'target' must be a path or a non-empty list of paths, got {target!r}"
        )
    return Triplet(
        reference=_path_field(record, "reference", fields["reference"]),
        text=fields["text"],
        targets=tuple(dict.fromkeys(_path_field(record, "target", t) for t in targets)),
        source=record.source,
    )


def _side_info(path: Path) -> dict[str, str]:
    side_info = {}
    for record in read_json_entries(path):
        if not isinstance(record.value, str):
            raise DataError(f"{record.source}: side information of {record.key!r} must be a string")
        side_info[_path_field(record, "key", record.key)] = record.value
    return side_info


def load_folder(
    directory: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("train", "test"),
    image_size: int | Sequence[int] = 224,
    resize: ResizeMode = "stretch",
    transform: ImageTransform | None = None,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> RetrievalData:
    """Load a folder in the generic format.

    Args:
        directory: the folder ``DIR``.
        splits: which of ``"train"`` and ``"test"`` to load (each needs its ``.jsonl``).
        image_size: images are resized to this (int or ``(H, W)``): tensors ``(3, H, W)``.
        resize: ``"stretch"`` (default) or ``"pad"`` (aspect ratio kept, padded with the
            normalisation mean colour), see :data:`~valfusion.data.RESIZE_MODES`.
        transform: ``PIL.Image -> (3, H, W)`` float tensor used instead of the default
            resize and normalisation, e.g. a ``torchvision.transforms.v2.Compose``; its
            output must have ``image_size`` (:data:`~valfusion.data.ImageTransform`). It is
            not recorded in the data's ``info``.
        check_images: decode every image before returning (in threads, cached: see
            :func:`~valfusion.data.verify_images`).
        drop_missing_images: drop triplets whose images are missing or unreadable instead
            of raising (counts printed and recorded in each split).

    Returns:
        :class:`RetrievalData` named ``"folder:DIR"`` with ``evaluation = {"test": ...}``;
        protocol ``"val"`` (no ``gallery.txt``) or ``"gallery.txt"``.

    Raises:
        DataError: ``file:line: ...`` for a malformed line, a missing key, an empty or
            whitespace-only ``"text"``, an empty split, a path leading outside
            ``directory``, missing or unreadable images (all listed) or a target not in
            the gallery.
    """
    directory = check_root_and_splits(directory, splits)
    images = ImageFiles(directory, match="path", image_size=image_size, resize=resize, transform=transform)
    side_path = directory / "side_info.json"
    side_info = _side_info(side_path) if side_path.is_file() else {}
    gallery_path = directory / "gallery.txt"

    loaded: dict[str, DataSplit] = {}
    for name in splits:
        path = directory / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file not found (split {name!r} requested)")
        triplets = [_triplet(record) for record in read_jsonl(path)]
        gallery: dict[str, str] | None = None
        if name == "test" and gallery_path.is_file():
            gallery = {}
            for line in read_lines(gallery_path):
                gallery.setdefault(_path_field(line, "gallery entry", line.value), line.source)
        loaded[name] = build_split(
            name,
            triplets,
            images=images,
            origin=str(path),
            gallery=gallery,
            side_info=side_info,
            check_images=check_images,
            drop_missing_images=drop_missing_images,
        )
    return RetrievalData(
        name=f"folder:{directory}",
        train=loaded.get("train"),
        evaluation={"test": loaded["test"]} if "test" in loaded else {},
        protocol="gallery.txt" if gallery_path.is_file() else "val",
        info={"image_size": size_record(image_size), **({} if resize == "stretch" else {"resize": resize})},
    )


def _picture(image: Any, image_id: str, path: Path) -> tuple[Any, str]:
    """``image`` as a ``PIL.Image`` and the format ``path``'s suffix picks, both checked."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('writing image files needs Pillow: pip install "valfusion[demo]"') from err
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"images[{image_id!r}]: expected a (3, H, W) tensor, got shape {tuple(image.shape)}"
            )
        if image.dtype != torch.uint8:
            image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        height, width = image.shape[1:]
        pixels = rearrange(image.cpu(), "c h w -> h w c").contiguous()
        # the raw bytes of a contiguous uint8 CPU tensor, without numpy
        image = Image.frombytes(
            "RGB", (width, height), ctypes.string_at(pixels.data_ptr(), pixels.numel())
        )
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"images[{image_id!r}]: expected a (3, H, W) tensor or a PIL.Image, "
            f"got {type(image).__name__}"
        )
    file_format = Image.registered_extensions().get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"images: {image_id!r} has no image suffix Pillow writes (.png, .jpg, ...)")
    return image, file_format


def _image_destinations(directory: Path, images: Mapping[str, Any]) -> dict[str, Path]:
    """``{key: file}`` for every image, each checked to lie inside ``directory``."""
    real_directory = directory.resolve()
    destinations: dict[str, Path] = {}
    written_by: dict[Path, str] = {}
    for image_id in images:
        normal = _inside_path(image_id) if isinstance(image_id, str) and image_id.strip() else None
        if normal is None:
            raise ValueError(
                f"images: keys must be paths relative to directory {str(directory)!r} that stay "
                f"inside it (no absolute paths, no '..' climbing out), got {image_id!r}"
            )
        real = (real_directory / normal).resolve()  # follows the links already there
        if not real.is_relative_to(real_directory):
            raise ValueError(
                f"images: {image_id!r} would be written to {real}, outside directory "
                f"{str(directory)!r} (through a symbolic link)"
            )
        if real in written_by:
            raise ValueError(f"images: {image_id!r} and {written_by[real]!r} name the same file")
        written_by[real] = image_id
        destinations[image_id] = real
    return destinations


def _write_picture(path: Path, picture: Any, file_format: str) -> None:
    atomic_write(path, lambda handle: picture.save(handle, format=file_format))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _line(triplet: Triplet) -> str:
    target: str | list[str] = (
        triplet.targets[0] if len(triplet.targets) == 1 else list(triplet.targets)
    )
    return json.dumps({"reference": triplet.reference, "text": triplet.text, "target": target})


def write_folder(
    directory: str | os.PathLike[str],
    *,
    images: Mapping[str, Any],
    train: Sequence[Triplet] | None = None,
    test: Sequence[Triplet] | None = None,
    gallery: Sequence[str] | None = None,
    side_info: Mapping[str, str] | None = None,
) -> Path:
    """Write triplets and images as a folder in the generic format.

    Every file is written atomically (:func:`valfusion.engine.io.atomic_write_bytes`'s
    writer), and only inside ``directory``: the image keys are checked, all of them, before
    anything is written.

    Args:
        directory: the folder to write (created if needed).
        images: ``{relative path: image}``; an image is a tensor ``(3, H, W)`` (uint8, or
            float in ``[0, 1]``) or a ``PIL.Image``; the path's suffix picks the format.
            A path is normalised (``a/./b.png`` is ``a/b.png``) and must stay inside
            ``directory``.
        train: training triplets (ids are the relative image paths).
        test: test triplets; several targets become a JSON list.
        gallery: written to ``gallery.txt`` when given.
        side_info: written to ``side_info.json`` when given.

    Returns:
        The folder's path.

    Raises:
        ValueError: an image key that is absolute, climbs out of ``directory`` with
            ``..`` or through a symbolic link, names the same file as another key, or has
            no image suffix; an image that is not a ``(3, H, W)`` tensor or a ``PIL.Image``.
    """
    directory = Path(directory)
    destinations = _image_destinations(directory, images)  # all checked before anything is written
    pictures = {key: _picture(image, key, destinations[key]) for key, image in images.items()}
    directory.mkdir(parents=True, exist_ok=True)
    for key, (picture, file_format) in pictures.items():
        _write_picture(destinations[key], picture, file_format)
    for name, triplets in (("train", train), ("test", test)):
        if triplets is not None:
            _write_text(directory / f"{name}.jsonl", "".join(_line(t) + "\n" for t in triplets))
    if gallery is not None:
        _write_text(directory / "gallery.txt", "".join(g + "\n" for g in gallery))
    if side_info is not None:
        _write_text(directory / "side_info.json", json.dumps(dict(side_info), indent=1))
    return directory
