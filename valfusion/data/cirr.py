"""CIRR (Liu et al., ICCV 2021): relative captions on real-life images (NLVR2), release rc2.

Expected layout under ``ROOT`` (as released; images are downloaded by the user)::

    ROOT/captions/cap.rc2.<split>.json        [{"pairid", "reference", "caption",
                                                "img_set": {"members": [6 ids], ...},
                                                "target_hard", "target_soft"}]  (no targets in test1)
    ROOT/image_splits/split.rc2.<split>.json  {image id: "./dev/<id>.png", ...}
    ROOT/<relative path of each image>        (or pass image_root)

``<split>`` is ``train``, ``val`` or ``test1``. Image ids are the split file's keys;
each is read from its relative path (``./dev/dev-244-0-img0.png``) under the image
folder, and only from inside it.

The CIRR protocol (named ``"cirr"`` in results): the gallery of ``val`` (2297 images)
and ``test1`` (2315) is the whole image split; each query's reference image is removed
from its ranking; Recall@{1, 5, 10, 50} counts ``target_hard`` only. Recall_subset@{1,
2, 3} ranks only the query's ``img_set.members`` (always 6, reference and target among
them) with the reference removed, so 5 candidates (:func:`~valfusion.metrics.recall_subset`).
``target_soft`` is not used by the official metrics and is not read. ``test1`` has no
targets: its queries are ranked and written as a submission for the authors' server
(:func:`~valfusion.engine.write_cirr_submission`).

Empty captions: the released ``test1`` file holds one query whose caption is a single
space (pairid 27098). The server expects every pairid, so ``test1`` queries keep an empty
caption (encoded as the unknown token), printed with their ``file:line`` and counted in
``info["empty_captions_kept"]``; in ``train`` and ``val`` an empty caption is a
:class:`DataError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath

from valfusion._validation import check_choice
from valfusion.data._loader_args import check_root_and_splits
from valfusion.data.annotations import Record, check_caption, read_json_entries, read_json_records
from valfusion.data.errors import DataError
from valfusion.data.images import ImageFiles, size_record
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.data.triplet import Triplet
from valfusion.data.validation import build_split

__all__ = ["CIRR_EVAL_SPLITS", "CirrSplit", "load_cirr"]

CIRR_EVAL_SPLITS: tuple[str, ...] = ("val", "test1")
"""The CIRR annotation splits that can be evaluated (``test1`` only as a server submission)."""
_RELEASE = "rc2"


@dataclass(frozen=True)
class CirrSplit(DataSplit):
    """A CIRR evaluation split: a :class:`DataSplit` plus what the CIRR protocol needs.

    Gallery and triplet ids are the images' relative paths (``dev/dev-244-0-img0.png``);
    ``names`` maps them back to CIRR's image ids for results and submissions.

    Attributes:
        name: the split's name (``"val"`` or ``"test1"``), as in :class:`DataSplit`.
        triplets: the queries; ``targets`` is ``(target_hard,)``, empty in ``test1``.
        gallery: the whole image split (ids are relative image paths).
        images: the image loader (reads only inside the image folder).
        side_info: none for CIRR (empty).
        dropped_triplets: queries dropped for missing or unreadable images.
        missing_images: image ids that could not be used.
        unreadable_images: of those, files that exist but do not decode.
        pairids: CIRR's ``pairid`` of each triplet, in triplet order.
        members: each triplet's ``img_set.members`` as image ids of the split (6 each,
            reference and target among them), in triplet order.
        names: ``{image id of the split: CIRR image id}``.
        has_targets: ``False`` for ``test1`` (its triplets have empty ``targets``).
    """

    pairids: tuple[int, ...] = ()
    members: tuple[tuple[str, ...], ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)
    has_targets: bool = True


@dataclass(frozen=True)
class _Query:
    pairid: int
    members: tuple[str, ...]


def _read_image_split(path: Path, sources: dict[str, str] | None = None) -> dict[str, str]:
    """``{CIRR id: image path relative to the image folder}`` of ``split.rc2.<split>.json``.

    ``sources``, when given, receives ``{image path: "file:line" of its entry}``.
    """
    paths: dict[str, str] = {}
    for record in read_json_entries(path):
        assert record.key is not None  # read_json_entries keys every record
        value = record.value
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{record.source}: path of {record.key!r} must be a non-empty string, got {value!r}")
        if record.key in paths:
            raise DataError(f"{record.source}: image id {record.key!r} appears twice")
        paths[record.key] = str(PurePosixPath(value))
        if sources is not None:
            sources.setdefault(paths[record.key], record.source)
    if not paths:
        raise DataError(f"{path}: no images (expected {{image id: relative path}})")
    return paths


def _image(record: Record, key: str, value: object, paths: Mapping[str, str], split_file: Path) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"{record.source}: {key!r} must be a non-empty image id, got {value!r:.80}")
    if value not in paths:
        raise DataError(f"{record.source}: {key} {value!r} is not in {split_file}")
    return paths[value]


def _read_queries(
    path: Path, paths: Mapping[str, str], split_file: Path, *, with_targets: bool, empty: list[str]
) -> tuple[list[Triplet], dict[str, _Query]]:
    """The queries of ``cap.rc2.<split>.json`` as triplets, and their pairid and members by source."""
    triplets: list[Triplet] = []
    queries: dict[str, _Query] = {}
    seen: dict[int, str] = {}
    for record in read_json_records(path):
        entry = record.value
        if not isinstance(entry, dict):
            raise DataError(f"{record.source}: expected an object, got {type(entry).__name__}")
        needed = ("pairid", "reference", "caption", "img_set", *(("target_hard",) if with_targets else ()))
        for key in needed:
            if key not in entry:
                raise DataError(f"{record.source}: missing key {key!r} (keys: {sorted(entry)})")
        pairid = entry["pairid"]
        if isinstance(pairid, bool) or not isinstance(pairid, int):
            raise DataError(f"{record.source}: 'pairid' must be an integer, got {pairid!r}")
        if pairid in seen:
            raise DataError(f"{record.source}: pairid {pairid} already used at {seen[pairid]}")
        seen[pairid] = record.source
        img_set = entry["img_set"]
        members = img_set.get("members") if isinstance(img_set, dict) else None
        if not isinstance(members, list) or not members:
            raise DataError(f"{record.source}: 'img_set' must hold a non-empty 'members' list, got {img_set!r:.80}")
        member_ids = tuple(_image(record, "member", m, paths, split_file) for m in members)
        reference = _image(record, "reference", entry["reference"], paths, split_file)
        targets: tuple[str, ...] = ()
        if with_targets:
            targets = (_image(record, "target_hard", entry["target_hard"], paths, split_file),)
            caption = check_caption(entry["caption"], record.source, "caption").strip()
        elif isinstance(entry["caption"], str):
            caption = entry["caption"].strip()
            if not caption:
                empty.append(record.source)
        else:
            caption = check_caption(entry["caption"], record.source, "caption")
        triplets.append(Triplet(reference, caption, targets, record.source))
        queries[record.source] = _Query(pairid, member_ids)
    if empty:
        print(
            f"valfusion: {path.name}: kept {len(empty)} quer{'ies' if len(empty) > 1 else 'y'} with an "
            "empty caption (the server expects every pairid): " + ", ".join(empty[:5]),
            file=sys.stderr,
        )
    return triplets, queries


def load_cirr(
    root: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("train", "test"),
    eval_split: str = "val",
    image_root: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] = 224,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> RetrievalData:
    """Load CIRR (release rc2) annotations onto :class:`RetrievalData` under the CIRR protocol.

    Training uses ``cap.rc2.train.json`` (gallery: the union of its references and
    targets); evaluation uses ``eval_split``, whose gallery is its whole image split.

    Args:
        root: the dataset folder (layout in the module docstring).
        splits: which of ``"train"`` and ``"test"`` (= ``eval_split``) to load.
        eval_split: ``"val"`` (targets public: Recall@K and Recall_subset@K) or ``"test1"``
            (no targets: a submission for the evaluation server).
        image_root: folder the split files' relative paths start from; default ``root``.
            Images are read only from inside it (a symbolic link out of it is refused).
        image_size: images are resized to this (int or ``(H, W)``): tensors ``(3, H, W)``.
        check_images: decode every image before returning (``False``: annotations only).
        drop_missing_images: drop queries whose images are missing or unreadable instead
            of raising; counts printed and recorded.

    Returns:
        Data named ``"cirr"``, protocol ``"cirr"``, ``evaluation = {eval_split: CirrSplit}``.

    Raises:
        DataError: ``file:line`` of a malformed record, a duplicate pairid, an image id
            not in the split file, an empty caption (train and val), a missing file, an
            empty split or a missing, unreadable or outside image.
    """
    check_choice(eval_split, "eval_split", CIRR_EVAL_SPLITS)
    root = check_root_and_splits(root, splits)
    images_root = root if image_root is None else Path(image_root)
    images = ImageFiles(images_root, match="path", image_size=image_size)
    empty: list[str] = []

    train: DataSplit | None = None
    if "train" in splits:
        split_file = root / "image_splits" / f"split.{_RELEASE}.train.json"
        captions = root / "captions" / f"cap.{_RELEASE}.train.json"
        triplets, _ = _read_queries(
            captions, _read_image_split(split_file), split_file, with_targets=True, empty=empty
        )
        train = build_split(
            "train", triplets, images=images, origin=str(captions),
            check_images=check_images, drop_missing_images=drop_missing_images,
        )

    evaluation: dict[str, DataSplit] = {}
    if "test" in splits:
        split_file = root / "image_splits" / f"split.{_RELEASE}.{eval_split}.json"
        captions = root / "captions" / f"cap.{_RELEASE}.{eval_split}.json"
        sources: dict[str, str] = {}
        paths = _read_image_split(split_file, sources)
        with_targets = eval_split != "test1"
        triplets, queries = _read_queries(captions, paths, split_file, with_targets=with_targets, empty=empty)
        split = build_split(
            eval_split, triplets, images=images, origin=str(captions), gallery=sources,
            check_images=check_images, drop_missing_images=drop_missing_images,
            require_targets=with_targets,
        )
        kept = [queries[t.source or ""] for t in split.triplets]
        in_gallery = set(split.gallery)
        evaluation[eval_split] = CirrSplit(
            **{f.name: getattr(split, f.name) for f in fields(DataSplit)},
            pairids=tuple(q.pairid for q in kept),
            members=tuple(tuple(m for m in q.members if m in in_gallery) for q in kept),
            names={image: name for name, image in paths.items()},
            has_targets=with_targets,
        )
    return RetrievalData(
        name="cirr",
        train=train,
        evaluation=evaluation,
        protocol="cirr",
        info={
            "release": _RELEASE,
            "eval_split": eval_split,
            "image_size": size_record(image_size),
            "empty_captions_kept": len(empty),
        },
    )
