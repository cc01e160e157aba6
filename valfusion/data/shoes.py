"""Shoes (Guo et al., 2018): relative captions on the shoe images of Berg et al. (2010).

Expected layout under ``ROOT``::

    ROOT/relative_captions_shoes.json   [{"ImageName", "ReferenceImageName", "RelativeCaption"}]
    ROOT/train_im_names.txt             image names of the training split
    ROOT/eval_im_names.txt              image names of the evaluation split
    ROOT/images/...                     the images, found by file name in any sub-folder
                                        (or pass image_root)

``ImageName`` is the target. A triplet belongs to the split whose image list holds
its reference or its target; a triplet whose images sit in both lists, or in
neither, is an error (the released files have none). The evaluation gallery is the
union of the evaluation queries' references and targets (protocol ``"val"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from valfusion.data._loader_args import check_root_and_splits
from valfusion.data.annotations import check_caption, read_json_records, read_lines
from valfusion.data.errors import DataError
from valfusion.data.images import ImageFiles, ImageTransform, ResizeMode, size_record
from valfusion.data.split import RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["load_shoes"]

_KEYS = ("ImageName", "ReferenceImageName", "RelativeCaption")


def load_shoes(
    root: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("train", "test"),
    image_root: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] = 224,
    resize: ResizeMode = "stretch",
    transform: ImageTransform | None = None,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> RetrievalData:
    """Load the Shoes annotations onto :class:`RetrievalData`.

    Args:
        root: the dataset folder (layout in the module docstring).
        splits: which of ``"train"`` and ``"test"`` (the ``eval`` image list) to load.
        image_root: folder searched (recursively) for the images; default ``root/images``.
            Images are read only from inside it (a symbolic link out of it is refused).
        image_size: images are resized to this (int or ``(H, W)``): tensors ``(3, H, W)``.
        resize: ``"stretch"`` (default) or ``"pad"`` (aspect ratio kept, padded with the
            normalisation mean colour), see :data:`~valfusion.data.RESIZE_MODES`.
        transform: ``PIL.Image -> (3, H, W)`` float tensor used instead of the default
            resize and normalisation, e.g. a ``torchvision.transforms.v2.Compose``; its
            output must have ``image_size`` (:data:`~valfusion.data.ImageTransform`). It is
            not recorded in the data's ``info``.
        check_images: decode every image before returning.
        drop_missing_images: drop triplets whose images are missing or unreadable instead
            of raising.

    Returns:
        Data named ``"shoes"``, protocol ``"val"``, ``evaluation = {"test": ...}``.

    Raises:
        DataError: ``file:line`` of a malformed record, an empty or whitespace-only
            caption, a triplet in both or neither split, a missing file, an empty split or
            a missing, unreadable or outside image.
    """
    root = check_root_and_splits(root, splits)
    lists = {
        "train": root / "train_im_names.txt",
        "test": root / "eval_im_names.txt",
    }
    members = {name: {line.value for line in read_lines(path)} for name, path in lists.items()}
    captions = root / "relative_captions_shoes.json"
    triplets: dict[str, list[Triplet]] = {"train": [], "test": []}
    for record in read_json_records(captions):
        entry = record.value
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) for k in _KEYS):
            raise DataError(
                f"{record.source}: expected an object with string keys {_KEYS}, got {entry!r}"
            )
        reference, target = entry["ReferenceImageName"], entry["ImageName"]
        owners = [n for n in ("train", "test") if {reference, target} & members[n]]
        if len(owners) != 1:
            where = "both" if owners else "neither"
            raise DataError(
                f"{record.source}: images {reference!r} -> {target!r} are in {where} of "
                f"{lists['train'].name} and {lists['test'].name}"
            )
        caption = check_caption(entry["RelativeCaption"], record.source, "RelativeCaption")
        triplets[owners[0]].append(Triplet(reference, caption.strip(), (target,), record.source))

    images = ImageFiles(
        root / "images" if image_root is None else image_root, match="name", image_size=image_size,
        resize=resize, transform=transform,
    )
    loaded = {
        name: build_split(
            name,
            triplets[name],
            images=images,
            origin=f"{captions} ({lists[name].name})",
            check_images=check_images,
            drop_missing_images=drop_missing_images,
        )
        for name in splits
    }
    return RetrievalData(
        name="shoes",
        train=loaded.get("train"),
        evaluation={"test": loaded["test"]} if "test" in loaded else {},
        protocol="val",
        info={"image_size": size_record(image_size), **({} if resize == "stretch" else {"resize": resize})},
    )
