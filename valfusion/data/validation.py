"""Checking a split before training: nothing is trained or evaluated on silently broken data.

Every loader ends by calling :func:`build_split`, which raises a :class:`DataError`
naming ``file:line`` for an empty split, a missing or unreadable image, an image path
leading outside the image folder, or a target missing from the gallery. Every image a
split uses (queries and gallery) is decoded once before training
(:mod:`valfusion.data.verify`), and every problem found is listed, not only the first.
Real copies of FashionIQ always miss some images (dead links), so
``drop_missing_images=True`` drops the triplets that need a missing or unreadable image
instead, prints how many, and records the counts in the split (and so in the results).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from valfusion.data.errors import DataError
from valfusion.data.images import ImageLoader
from valfusion.data.split import DataSplit
from valfusion.data.triplet import Triplet
from valfusion.data.verify import check_split_images

__all__ = ["MAX_LISTED", "DataError", "build_split", "union_gallery"]

MAX_LISTED = 20
"""Problems listed in one :class:`DataError`; the rest are counted (``... and N more``)."""


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


def _listing(problems: Sequence[str], summary: str) -> str:
    """The problems, one per line (``;`` ends each, for one-line display), then the summary."""
    shown = list(problems[:MAX_LISTED])
    if len(problems) > MAX_LISTED:
        shown.append(f"... and {len(problems) - MAX_LISTED} more")
    return ";\n".join([*shown, summary])


def _merge_aliases(
    aliases: Mapping[str, str],
    triplets: Sequence[Triplet],
    gallery: Mapping[str, str],
    side_info: Mapping[str, str],
) -> tuple[list[Triplet], dict[str, str], dict[str, str]]:
    """Rename every alias to the first id of its file, so that each file is one gallery item."""

    def canonical(image_id: str) -> str:
        return aliases.get(image_id, image_id)

    triplets = [
        replace(
            t,
            reference=canonical(t.reference),
            targets=tuple(dict.fromkeys(canonical(x) for x in t.targets)),
        )
        for t in triplets
    ]
    merged_gallery: dict[str, str] = {}
    for image_id, source in gallery.items():
        merged_gallery.setdefault(canonical(image_id), source)
    merged_side = {k: v for k, v in side_info.items() if k not in aliases}
    for image_id, text in side_info.items():
        if image_id in aliases:
            merged_side.setdefault(aliases[image_id], text)
    return triplets, merged_gallery, merged_side


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
    require_targets: bool = True,
) -> DataSplit:
    """Validate a split's triplets, images and gallery, and assemble the :class:`DataSplit`.

    Checks, in order: the split has triplets; every triplet has a target; every image
    it uses (queries and gallery) lies inside the image folder, exists and decodes
    (:func:`~valfusion.data.verify.check_split_images`: decoded in parallel, cached);
    every target is in the gallery. Ids that name the same file (``images/../a.png``
    and ``a.png``, a link and its target) become one id, the first seen, so that each
    file is one gallery item. Loaders that render in memory are only asked
    ``id in images``.

    Args:
        name: the split's name (``"train"``, ``"test"``, ``"dress"``...).
        triplets: the split's triplets, each with its ``source`` (``file:line``).
        images: the split's image loader.
        origin: the file (or folder) the split was read from, for whole-split errors.
        gallery: ``{image id: "file:line" it came from}``; default: the union of the
            references and targets (the "val" protocol), recomputed after dropping.
        side_info: ``{image id: text}``; kept for the images the split uses.
        check_images: check every image (``False``: annotations only; images are
            only read, and may then fail, when used).
        drop_missing_images: drop triplets whose reference or every target is missing or
            unreadable (such targets among several correct ones are removed), remove such
            gallery images, print the counts; otherwise each one is listed in an error.
        require_targets: every triplet needs a target (``False``: queries whose targets
            are not public, such as CIRR's test1 split, keep an empty ``targets``).

    Returns:
        The validated split with ``dropped_triplets``, ``missing_images`` and
        ``unreadable_images`` set.

    Raises:
        DataError: ``file:line: ...`` for an empty split, a triplet without targets, an
            image path outside the image folder, missing or unreadable images (without
            ``drop_missing_images``; all listed, up to :data:`MAX_LISTED`) or a target not
            in the gallery.
    """
    if not triplets:
        raise DataError(f"{origin}: split {name!r} is empty (no triplets)")
    for triplet in triplets:
        if require_targets and not triplet.targets:
            raise DataError(f"{triplet.source}: triplet has no target")
    derived_gallery = gallery is None
    gallery = dict(union_gallery(triplets) if gallery is None else gallery)
    side_info = dict(side_info or {})

    bad: set[str] = set()
    unreadable = 0
    dropped = 0
    if check_images:
        used = union_gallery(triplets)  # name a query's line first, then the gallery's
        for image_id, source in gallery.items():
            used.setdefault(image_id, source)
        check = check_split_images(images, used)
        if check.outside:
            raise DataError(
                _listing(
                    [f"{used[i]}: {reason}" for i, reason in check.outside.items()],
                    f"split {name!r}: {len(check.outside)} of its {len(used)} images lie outside "
                    "the image folder; images are read only from inside it",
                )
            )
        if check.aliases:
            triplets, gallery, side_info = _merge_aliases(check.aliases, triplets, gallery, side_info)
            alias, first = next(iter(check.aliases.items()))
            print(
                f"valfusion: split {name!r}: {len(check.aliases)} image ids name a file an "
                f"earlier id names ({used[alias]}: {alias!r} is {first!r}); each file is one "
                "image of the split",
                file=sys.stderr,
            )
        problems = {i: f"{used[i]}: image {i!r} not found{_where(images, i)}" for i in check.missing}
        problems.update(
            {i: f"{used[i]}: image {i!r} cannot be used: {why}" for i, why in check.unreadable.items()}
        )
        bad = set(problems)
        unreadable = len(check.unreadable)
        if bad and not drop_missing_images:
            in_order = [problems[i] for i in used if i in problems]
            raise DataError(
                _listing(
                    in_order,
                    f"split {name!r}: {len(bad)} of its {len(used)} images are missing "
                    f"({len(check.missing)}) or unreadable ({unreadable}) "
                    "(drop_missing_images=True drops the triplets that use them)",
                )
            )
        if bad:
            kept = []
            for triplet in triplets:
                targets = tuple(t for t in triplet.targets if t not in bad)
                if triplet.reference in bad or (triplet.targets and not targets):
                    dropped += 1
                elif len(targets) != len(triplet.targets):
                    kept.append(replace(triplet, targets=targets))
                else:
                    kept.append(triplet)
            triplets = kept
            if derived_gallery:  # the "val" gallery is defined by the queries that remain
                gallery = union_gallery(triplets)
            else:
                gallery = {g: src for g, src in gallery.items() if g not in bad}
            print(
                f"valfusion: split {name!r}: dropped {dropped} of {dropped + len(triplets)} "
                f"triplets for {len(bad)} missing or unreadable images ({unreadable} "
                f"unreadable); gallery now {len(gallery)} images",
                file=sys.stderr,
            )
            if not triplets:
                raise DataError(
                    f"{origin}: split {name!r} is empty after dropping {dropped} triplets "
                    "whose images are missing or unreadable"
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
    side = {k: v for k, v in side_info.items() if k in used_ids}
    return DataSplit(
        name=name,
        triplets=tuple(triplets),
        gallery=tuple(gallery),
        images=images,
        side_info=side,
        dropped_triplets=dropped,
        missing_images=len(bad),
        unreadable_images=unreadable,
    )
