"""Checking a split before training: nothing is trained or evaluated on silently broken data.

Every loader ends by calling :func:`build_split`, which raises a :class:`DataError`
naming ``file:line`` for an empty split, a missing image or a target missing from
the gallery. Real copies of FashionIQ always miss some images (dead links), so
``drop_missing_images=True`` drops the triplets that need them instead, prints how
many, and records the counts in the split (and so in the results).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from valfusion.data.errors import DataError
from valfusion.data.images import ImageLoader
from valfusion.data.split import DataSplit
from valfusion.data.triplet import Triplet

__all__ = ["DataError", "build_split", "union_gallery"]


def union_gallery(triplets: Iterable[Triplet]) -> dict[str, str]:
    """The "val" protocol gallery: the union of the triplets' references and targets.

    Args:
        triplets: the evaluation queries.

    Returns:
        ``{image id: source of its first mention}`` in order of first appearance.
    """
    gallery: dict[str, str] = {}
    for triplet in triplets:
        for image_id in (triplet.reference, *triplet.targets):
            gallery.setdefault(image_id, triplet.source or "?")
    return gallery


def _where(images: ImageLoader, image_id: str) -> str:
    locate = getattr(images, "expected_location", None)
    return f" (looked for {locate(image_id)})" if locate is not None else ""


def build_split(
    name: str,
    triplets: Sequence[Triplet],
    *,
    images: ImageLoader,
    origin: str,
    gallery: Mapping[str, str] | None = None,
    side_info: Mapping[str, str] | None = None,
    check_images: bool = True,
    drop_missing_images: bool = False,
) -> DataSplit:
    """Validate a split's triplets, images and gallery, and assemble the :class:`DataSplit`.

    Checks, in order: the split has triplets; every triplet has a target; every image
    it uses exists (``id in images``); every target is in the gallery.

    Args:
        name: the split's name (``"train"``, ``"test"``, ``"dress"``...).
        triplets: the split's triplets, each with its ``source`` (``file:line``).
        images: the split's image loader.
        origin: the file (or folder) the split was read from, for whole-split errors.
        gallery: ``{image id: "file:line" it came from}``; default: the union of the
            references and targets (the "val" protocol), recomputed after dropping.
        side_info: ``{image id: text}``; kept for the images the split uses.
        check_images: look up every image (``False``: annotations only, images are
            only read, and may then fail, when used).
        drop_missing_images: drop triplets whose reference or every target is missing
            (missing targets among several correct ones are removed), remove missing
            gallery images, print the counts; otherwise a missing image is an error.

    Returns:
        The validated split with ``dropped_triplets`` and ``missing_images`` set.

    Raises:
        DataError: ``file:line: ...`` for an empty split, a triplet without targets, a
            missing image (without ``drop_missing_images``) or a target not in the gallery.
    """
    if not triplets:
        raise DataError(f"{origin}: split {name!r} is empty (no triplets)")
    for triplet in triplets:
        if not triplet.targets:
            raise DataError(f"{triplet.source}: triplet has no target")
    derived_gallery = gallery is None
    gallery = dict(union_gallery(triplets) if gallery is None else gallery)

    missing: set[str] = set()
    dropped = 0
    if check_images:
        used = union_gallery(triplets)  # name a query's line first, then the gallery's
        for image_id, source in gallery.items():
            used.setdefault(image_id, source)
        missing = {image_id for image_id in used if image_id not in images}
        if missing and not drop_missing_images:
            first = next(i for i in used if i in missing)
            raise DataError(
                f"{used[first]}: image {first!r} not found{_where(images, first)}; "
                f"{len(missing)} of the {len(used)} images of split {name!r} are missing "
                "(drop_missing_images=True drops the triplets that use them)"
            )
        if missing:
            kept = []
            for triplet in triplets:
                targets = tuple(t for t in triplet.targets if t not in missing)
                if triplet.reference in missing or not targets:
                    dropped += 1
                elif len(targets) != len(triplet.targets):
                    kept.append(replace(triplet, targets=targets))
                else:
                    kept.append(triplet)
            triplets = kept
            if derived_gallery:  # the "val" gallery is defined by the queries that remain
                gallery = union_gallery(triplets)
            else:
                gallery = {g: src for g, src in gallery.items() if g not in missing}
            print(
                f"valfusion: split {name!r}: dropped {dropped} of {dropped + len(triplets)} "
                f"triplets for {len(missing)} missing images; gallery now {len(gallery)} images",
                file=sys.stderr,
            )
            if not triplets:
                raise DataError(
                    f"{origin}: split {name!r} is empty after dropping {dropped} triplets "
                    "whose images are missing"
                )

    for triplet in triplets:
        for target in triplet.targets:
            if target not in gallery:
                raise DataError(
                    f"{triplet.source}: target {target!r} is not in the gallery of split "
                    f"{name!r} ({len(gallery)} images)"
                )

    used_ids = set(gallery)
    for triplet in triplets:
        used_ids.add(triplet.reference)
        used_ids.update(triplet.targets)
    side = {k: v for k, v in (side_info or {}).items() if k in used_ids}
    return DataSplit(
        name=name,
        triplets=tuple(triplets),
        gallery=tuple(gallery),
        images=images,
        side_info=side,
        dropped_triplets=dropped,
        missing_images=len(missing),
    )
