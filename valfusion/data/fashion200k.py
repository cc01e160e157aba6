"""Fashion200k (Han et al., 2017) as used by TIRG and VAL: captions that differ in one word.

Expected layout under ``ROOT`` (images keep the relative paths the label files use)::

    ROOT/labels/<category>_<split>_detect_all.txt   lines "<image path>\\t<score>\\t<caption>"
    ROOT/test_queries.txt                           lines "<reference path> <target path>"
    ROOT/<image path>                               (or pass image_root)

Test queries: the text is ``"replace X with Y"`` with X the first reference word
missing from the target caption and Y the first target word missing from the
reference caption (TIRG's rule); the correct targets are every test image whose
caption equals the target's caption, the reference excluded; the gallery is every
test image. Training pairs: two captions are siblings when they have the same
number of words and differ in exactly one position; every training image with a
sibling caption gives one triplet towards a sibling drawn with ``seed``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from valfusion.data._loader_args import check_root_and_splits
from valfusion.data.annotations import read_lines
from valfusion.data.errors import DataError
from valfusion.data.images import ImageFiles, ImageTransform, ResizeMode, size_record
from valfusion.data.split import RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["load_fashion200k", "replace_text"]


def _read_labels(root: Path, split: str) -> tuple[dict[str, str], dict[str, str]]:
    """``({image path: caption}, {image path: source})`` from every label file of ``split``."""
    files = sorted((root / "labels").glob(f"*_{split}_detect_all.txt"))
    if not files:
        raise DataError(f"{root / 'labels'}: no label file *_{split}_detect_all.txt")
    captions: dict[str, str] = {}
    sources: dict[str, str] = {}
    for path in files:
        for line in read_lines(path):
            fields = line.value.split("\t")
            if len(fields) != 3 or not fields[0].strip() or not fields[2].strip():
                raise DataError(
                    f"{line.source}: expected '<image path>\\t<detection score>\\t<caption>', got {line.value!r}"
                )
            image, caption = fields[0].strip(), " ".join(fields[2].split())
            if image in captions and captions[image] != caption:
                raise DataError(
                    f"{line.source}: {image!r} has caption {caption!r} but {sources[image]} gave {captions[image]!r}"
                )
            captions.setdefault(image, caption)
            sources.setdefault(image, line.source)
    return captions, sources


def replace_text(source_caption: str, target_caption: str) -> str:
    """TIRG's modification text between two captions.

    ``"replace X with Y"`` where X is the first word of ``source_caption`` not in
    ``target_caption`` and Y the first word of ``target_caption`` not in
    ``source_caption`` (the last word when there is none, as in TIRG).

    Args:
        source_caption: the reference image's caption.
        target_caption: the target image's caption.

    Returns:
        The text.
    """
    source_words, target_words = source_caption.split(), target_caption.split()
    old = next((w for w in source_words if w not in target_words), source_words[-1])
    new = next((w for w in target_words if w not in source_words), target_words[-1])
    return f"replace {old} with {new}"


def _by_caption(captions: dict[str, str]) -> dict[str, list[str]]:
    images: dict[str, list[str]] = {}
    for image, caption in captions.items():
        images.setdefault(caption, []).append(image)
    return images


def _train_triplets(captions: dict[str, str], sources: dict[str, str], seed: int) -> list[Triplet]:
    images_of = _by_caption(captions)
    # captions differing in exactly one position share the key (words before, words after)
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for caption in images_of:
        words = tuple(caption.split())
        for i in range(len(words)):
            groups.setdefault((words[:i], words[i + 1 :]), []).append(caption)
    siblings: dict[str, list[tuple[str, int]]] = {}
    for (before, _), members in groups.items():
        for caption in members:
            siblings.setdefault(caption, []).extend(
                (m, len(before)) for m in members if m != caption
            )
    rng = random.Random(f"valfusion-fashion200k/{seed}")
    triplets = []
    for image, caption in captions.items():
        if not siblings.get(caption):
            continue
        other, position = rng.choice(siblings[caption])
        old, new = caption.split()[position], other.split()[position]
        candidates = images_of[other]
        first = rng.choice(candidates)
        targets = (first, *(c for c in candidates if c != first))
        triplets.append(Triplet(image, f"replace {old} with {new}", targets, sources[image]))
    return triplets


def _test_triplets(path: Path, captions: dict[str, str]) -> list[Triplet]:
    images_of = _by_caption(captions)
    triplets = []
    for line in read_lines(path):
        fields = line.value.split()
        if len(fields) != 2:
            raise DataError(
                f"{line.source}: expected '<reference path> <target path>', got {line.value!r}"
            )
        for image in fields:
            if image not in captions:
                raise DataError(f"{line.source}: image {image!r} is not in the test label files")
        reference, target = fields
        targets = tuple(t for t in images_of[captions[target]] if t != reference)
        if not targets:
            raise DataError(
                f"{line.source}: no test image other than the reference has the target's caption"
            )
        text = replace_text(captions[reference], captions[target])
        triplets.append(Triplet(reference, text, targets, line.source))
    return triplets


def load_fashion200k(
    root: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] = 224,
    resize: ResizeMode = "stretch",
    transform: ImageTransform | None = None,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> RetrievalData:
    """Load Fashion200k onto :class:`RetrievalData`.

    Args:
        root: the dataset folder (layout in the module docstring).
        splits: which of ``"train"`` and ``"test"`` to load.
        seed: draws each training image's sibling caption and first target.
        image_root: folder the label files' image paths are relative to; default ``root``.
            Images are read only from inside it (``..`` climbing out, or a symbolic link
            out of it, is refused).
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
        Data named ``"fashion200k"``, protocol ``"original"`` (gallery: every test image),
        side information = each image's caption.

    Raises:
        DataError: ``file:line`` of a malformed label or query line, an unknown query
            image, a missing file, an empty split or a missing, unreadable or outside image.
    """
    root = check_root_and_splits(root, splits)
    images = ImageFiles(
        root if image_root is None else image_root, match="path", image_size=image_size,
        resize=resize, transform=transform,
    )
    build = partial(
        build_split,
        images=images,
        check_images=check_images,
        drop_missing_images=drop_missing_images,
    )
    train = test = None
    if "train" in splits:
        captions, sources = _read_labels(root, "train")
        train = build(
            "train",
            _train_triplets(captions, sources, seed),
            origin=f"{root / 'labels'}/*_train_detect_all.txt (no two captions differ in one word)",
            side_info=captions,
        )
    if "test" in splits:
        captions, sources = _read_labels(root, "test")
        queries = root / "test_queries.txt"
        test = build(
            "test",
            _test_triplets(queries, captions),
            origin=str(queries),
            gallery=sources,
            side_info=captions,
        )
    return RetrievalData(
        name="fashion200k",
        train=train,
        evaluation={"test": test} if test is not None else {},
        protocol="original",
        info={"seed": seed, "image_size": size_record(image_size), **({} if resize == "stretch" else {"resize": resize})},
    )
