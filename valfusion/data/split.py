"""The dataset-agnostic structures every data source produces.

A :class:`RetrievalData` is what the engine consumes: a training :class:`DataSplit`
and one or more evaluation splits (FashionIQ reports one per category), each
holding its triplets, its gallery of image ids, an image loader, the side
information of its images, and how many triplets were dropped for missing or
unreadable images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from valfusion.data.images import ImageLoader
from valfusion.data.triplet import Triplet

__all__ = ["DataSplit", "RetrievalData"]


@dataclass(frozen=True)
class DataSplit:
    """One split of a composed-retrieval dataset.

    Attributes:
        name: the split's name as results report it (``"train"``, ``"test"``, ``"dress"``...).
        triplets: the queries (reference id, text, correct target ids, ``file:line``).
        gallery: ids of the images ranked at evaluation (no duplicates); every
            triplet's targets are in it.
        images: maps an id to a float tensor ``(3, H, W)``; ``id in images`` says whether
            the image exists.
        side_info: ``{image id: text}`` for the images that have side information
            (attribute tags, captions, scene descriptions).
        dropped_triplets: triplets removed because an image was missing or unreadable
            (only with ``drop_missing_images=True``; otherwise such images are an error).
        missing_images: distinct image ids that could not be used (references, targets,
            gallery): missing files and, counted among them, unreadable ones.
        unreadable_images: of ``missing_images``, the files that exist but do not decode
            (empty, truncated, corrupt, not an image, or too large).
    """

    name: str
    triplets: tuple[Triplet, ...]
    gallery: tuple[str, ...]
    images: ImageLoader
    side_info: Mapping[str, str] = field(default_factory=dict)
    dropped_triplets: int = 0
    missing_images: int = 0
    unreadable_images: int = 0

    def __len__(self) -> int:
        return len(self.triplets)

    @cached_property
    def gallery_index(self) -> dict[str, int]:
        """``{image id: position in the gallery}``."""
        return {image_id: i for i, image_id in enumerate(self.gallery)}

    def target_indices(self) -> list[list[int]]:
        """Gallery positions of each triplet's correct targets.

        Returns:
            ``len(self)`` lists of gallery indices (each non-empty).
        """
        index = self.gallery_index
        return [[index[t] for t in triplet.targets] for triplet in self.triplets]

    def reference_indices(self) -> list[int]:
        """Gallery position of each triplet's reference image (to exclude it from its ranking).

        Returns:
            ``len(self)`` ints, ``-1`` where the reference is not in the gallery.
        """
        index = self.gallery_index
        return [index.get(triplet.reference, -1) for triplet in self.triplets]

    def summary(self) -> dict[str, int]:
        """Counts to record next to results: triplets, gallery size, dropped, missing, unreadable."""
        return {
            "num_triplets": len(self.triplets),
            "gallery_size": len(self.gallery),
            "dropped_triplets": self.dropped_triplets,
            "missing_images": self.missing_images,
            "unreadable_images": self.unreadable_images,
        }


@dataclass(frozen=True)
class RetrievalData:
    """A loaded data source: training split, evaluation split(s) and how they were built.

    Attributes:
        name: the source (``"synthetic"``, ``"fashioniq-dress"``, ``"folder:/data/x"``...).
        train: the training split, or ``None`` when only evaluation splits were loaded.
        evaluation: evaluation splits by name; one (``"test"``) for most sources, one
            per category for FashionIQ. Recall is reported per split (and averaged).
        protocol: how galleries were defined, to print next to every number
            (``"val"``: union of the queries' references and targets; ``"original"``:
            the whole image split; ``"synthetic"``; ``"fashion200k"``: every test image).
        caption_mode: FashionIQ's ``"separate"`` or ``"joined"`` captions, else ``None``.
        info: further facts about the source (seed, category, held-out combinations...),
            JSON-serialisable.
    """

    name: str
    train: DataSplit | None
    evaluation: Mapping[str, DataSplit]
    protocol: str
    caption_mode: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def test(self) -> DataSplit:
        """The evaluation split when there is exactly one.

        Raises:
            ValueError: there are none or several (use :attr:`evaluation`).
        """
        if len(self.evaluation) != 1:
            raise ValueError(
                f"{self.name}: expected exactly one evaluation split, found "
                f"{sorted(self.evaluation)}; iterate over .evaluation instead"
            )
        return next(iter(self.evaluation.values()))

    def metadata(self) -> dict[str, Any]:
        """Everything results should record about the data (JSON-serialisable).

        Returns:
            ``{"name", "protocol", "caption_mode", "splits": {split: summary}, **info}``
            where each summary has ``num_triplets``, ``gallery_size``,
            ``dropped_triplets``, ``missing_images`` and ``unreadable_images``.
        """
        splits = {} if self.train is None else {"train": self.train.summary()}
        splits.update({name: split.summary() for name, split in self.evaluation.items()})
        return {
            "name": self.name,
            "protocol": self.protocol,
            "caption_mode": self.caption_mode,
            "splits": splits,
            **self.info,
        }
