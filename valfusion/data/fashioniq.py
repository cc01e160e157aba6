"""FashionIQ (Guo et al., 2021): relative captions of dresses, shirts and tops.

Expected layout under ``ROOT`` (as released; images are downloaded by the user)::

    ROOT/captions/cap.<category>.<split>.json        [{"target", "candidate", "captions": [s, s]}]
    ROOT/image_splits/split.<category>.<split>.json  [ASIN, ...]
    ROOT/tags/asin2attr.<category>.<split>.json      {ASIN: [[word, ...], ...]}  (optional;
                                                     also found under image_tag_dataset/tags/)
    ROOT/images/<ASIN>.jpg (or .png ...)             (or pass image_root)

``candidate`` is the reference image. Empty captions: the released val files hold
three pairs with one empty caption (one in shirt, two in toptee, none with both
empty). An empty or whitespace-only caption is dropped (no query is made of it, and
a joined query uses the other caption), printed with its ``file:line`` and counted in
``info["empty_captions_dropped"]``; a pair whose captions are all empty is a
:class:`DataError`. So the shirt and toptee val splits have 4075 and 3920 separate
queries, not 2 x 2038 and 2 x 1961.

Two choices change the numbers and are
therefore named and recorded: ``caption_mode`` (``"separate"``: each caption is
its own query, as VAL did; ``"joined"``: one query per pair, captions joined with
``" and "``) and ``protocol`` (``"val"``: the gallery is the union of the
evaluation queries' references and targets; ``"original"``: the category's whole
image split).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from valfusion._validation import check_choice
from valfusion.data._loader_args import check_root_and_splits
from valfusion.data.annotations import read_json_entries, read_json_records
from valfusion.data.errors import DataError
from valfusion.data.images import ImageFiles, ImageTransform, ResizeMode, size_record
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["CAPTION_MODES", "FASHIONIQ_CATEGORIES", "load_fashioniq", "read_fashioniq_tags"]

FASHIONIQ_CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
"""The three FashionIQ categories (``category="all"`` loads them all)."""
CAPTION_MODES: tuple[str, ...] = ("separate", "joined")
"""``"separate"``: each of a pair's two captions is a query (VAL); ``"joined"``: one query."""
PROTOCOLS: tuple[str, ...] = ("val", "original")
"""FashionIQ evaluation galleries: the queries' images (``"val"``) or the image split."""


def _read_pairs(path: Path, caption_mode: str, empty: list[str]) -> list[Triplet]:
    """The pairs of ``path`` as triplets; the sources of dropped empty captions go to ``empty``."""
    triplets, dropped = [], []
    for record in read_json_records(path):
        pair = record.value
        if not isinstance(pair, dict):
            raise DataError(f"{record.source}: expected an object, got {type(pair).__name__}")
        for key in ("candidate", "target", "captions"):
            if key not in pair:
                raise DataError(f"{record.source}: missing key {key!r} (keys: {sorted(pair)})")
        for key in ("candidate", "target"):
            if not isinstance(pair[key], str) or not pair[key]:
                raise DataError(
                    f"{record.source}: {key!r} must be a non-empty ASIN string, got {pair[key]!r}"
                )
        captions = pair["captions"]
        if (
            not isinstance(captions, list)
            or not captions
            or not all(isinstance(c, str) for c in captions)
        ):
            raise DataError(
                f"{record.source}: 'captions' must be a non-empty list of strings, got {captions!r}"
            )
        kept = [c.strip() for c in captions if c.strip()]
        if not kept:
            raise DataError(
                f"{record.source}: every caption is empty or only whitespace, got {captions!r}"
            )
        dropped += [record.source] * (len(captions) - len(kept))
        texts = kept if caption_mode == "separate" else [" and ".join(kept)]
        triplets += [
            Triplet(pair["candidate"], text, (pair["target"],), record.source) for text in texts
        ]
    if dropped:
        print(
            f"valfusion: {path.name}: dropped {len(dropped)} empty caption"
            f"{'s' if len(dropped) > 1 else ''} (their pairs keep their other captions): "
            + ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""),
            file=sys.stderr,
        )
    empty += dropped
    return triplets


def read_fashioniq_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``asin2attr.<category>.<split>.json`` as side information.

    Each entry maps an ASIN to lists of attribute words (one list per attribute type;
    the released files hold six, some empty); the text is the words in order, each once.

    Args:
        path: the tags file.

    Returns:
        ``{ASIN: "dress cotton ruffled fit round hem"}``.

    Raises:
        DataError: ``file:line`` of an entry that is not a list of lists of words.
    """
    tags: dict[str, str] = {}
    for record in read_json_entries(Path(path)):
        assert record.key is not None  # read_json_entries keys every record
        groups = record.value
        if not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(w, str) for w in g) for g in groups
        ):
            raise DataError(
                f"{record.source}: tags of {record.key!r} must be lists of words, got {groups!r}"
            )
        tags[record.key] = " ".join(dict.fromkeys(w for group in groups for w in group))
    return tags


def _tags_path(root: Path, category: str, split: str) -> Path | None:
    name = f"asin2attr.{category}.{split}.json"
    for folder in (root / "tags", root / "image_tag_dataset" / "tags"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashioniq(
    root: str | os.PathLike[str],
    category: str = "all",
    *,
    splits: Sequence[str] = ("train", "test"),
    protocol: str = "val",
    caption_mode: str = "separate",
    eval_split: str = "val",
    image_root: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] = 224,
    resize: ResizeMode = "stretch",
    transform: ImageTransform | None = None,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> RetrievalData:
    """Load FashionIQ annotations onto :class:`RetrievalData`.

    Training uses the ``train`` files of the chosen categories (together); evaluation
    uses the ``eval_split`` files, one evaluation split per category (FashionIQ reports
    Recall@10/50 per category and their average).

    Args:
        root: the dataset folder (layout in the module docstring).
        category: ``"dress"``, ``"shirt"``, ``"toptee"`` or ``"all"``.
        splits: which of ``"train"`` and ``"test"`` (= ``eval_split``) to load.
        protocol: evaluation gallery, ``"val"`` (union of the queries' references and
            targets) or ``"original"`` (``image_splits/split.<category>.<eval_split>.json``).
        caption_mode: ``"separate"`` (two queries per pair, as VAL) or ``"joined"`` (one
            query, captions joined with ``" and "``).
        eval_split: the annotation split evaluated (``"val"``; the test split's targets
            are not public).
        image_root: folder of ``<ASIN>.<ext>`` images; default ``root/images``. Images are
            read only from inside it (a symbolic link out of it is refused).
        image_size: images are resized to this (int or ``(H, W)``): tensors ``(3, H, W)``.
        resize: ``"stretch"`` (default) or ``"pad"`` (aspect ratio kept, padded with the
            normalisation mean colour), see :data:`~valfusion.data.RESIZE_MODES`.
        transform: ``PIL.Image -> (3, H, W)`` float tensor used instead of the default
            resize and normalisation, e.g. a ``torchvision.transforms.v2.Compose``; its
            output must have ``image_size`` (:data:`~valfusion.data.ImageTransform`). It is
            not recorded in the data's ``info``.
        check_images: decode every image before returning (``False``: annotations only).
        drop_missing_images: drop triplets whose images are missing (dead links) or
            unreadable instead of raising; counts printed and recorded.

    Returns:
        Data named ``"fashioniq-<category>"``; ``evaluation`` keyed by category; side
        information from the tags files when present; ``info["empty_captions_dropped"]``
        counts the empty captions left out (module docstring).

    Raises:
        DataError: ``file:line`` of a malformed record, a pair whose captions are all
            empty, a missing file, an empty split, a missing, unreadable or outside image
            or a target not in the gallery.
    """
    check_choice(category, "category", (*FASHIONIQ_CATEGORIES, "all"))
    check_choice(protocol, "protocol", PROTOCOLS)
    check_choice(caption_mode, "caption_mode", CAPTION_MODES)
    root = check_root_and_splits(root, splits)
    categories = FASHIONIQ_CATEGORIES if category == "all" else (category,)
    images = ImageFiles(
        root / "images" if image_root is None else image_root, match="stem", image_size=image_size,
        resize=resize, transform=transform,
    )
    build = partial(
        build_split,
        images=images,
        check_images=check_images,
        drop_missing_images=drop_missing_images,
    )

    def side_info(split: str) -> dict[str, str]:  # the tags of every chosen category
        merged: dict[str, str] = {}
        for cat in categories:
            path = _tags_path(root, cat, split)
            merged.update(read_fashioniq_tags(path) if path is not None else {})
        return merged

    empty_captions: list[str] = []
    train: DataSplit | None = None
    if "train" in splits:
        paths = [root / "captions" / f"cap.{cat}.train.json" for cat in categories]
        triplets = [t for path in paths for t in _read_pairs(path, caption_mode, empty_captions)]
        train = build(
            "train",
            triplets,
            origin=", ".join(map(str, paths)),
            side_info=side_info("train"),
        )

    evaluation: dict[str, DataSplit] = {}
    if "test" in splits:
        tags = side_info(eval_split)
        for cat in categories:
            path = root / "captions" / f"cap.{cat}.{eval_split}.json"
            gallery: dict[str, str] | None = None
            if protocol == "original":
                split_file = root / "image_splits" / f"split.{cat}.{eval_split}.json"
                gallery = {}
                for record in read_json_records(split_file):
                    if not isinstance(record.value, str):
                        raise DataError(
                            f"{record.source}: expected an ASIN string, got {record.value!r}"
                        )
                    gallery.setdefault(record.value, record.source)
            evaluation[cat] = build(
                cat,
                _read_pairs(path, caption_mode, empty_captions),
                origin=str(path),
                gallery=gallery,
                side_info=tags,
            )
    return RetrievalData(
        name=f"fashioniq-{category}",
        train=train,
        evaluation=evaluation,
        protocol=protocol,
        caption_mode=caption_mode,
        info={
            "category": category,
            "eval_split": eval_split,
            "image_size": size_record(image_size), **({} if resize == "stretch" else {"resize": resize}),
            "empty_captions_dropped": len(empty_captions),
        },
    )
