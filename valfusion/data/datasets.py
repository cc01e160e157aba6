"""``torch.utils.data.Dataset`` views of a :class:`~valfusion.data.split.DataSplit`.

Training reads :class:`TripletDataset` (reference image, text, target image, the
target's side information); evaluation encodes the queries with
:class:`QueryDataset` and the gallery with :class:`GalleryDataset`. Use
``collate_fn=collate_triplets`` / ``collate_queries`` with a ``DataLoader``
(texts stay lists of strings; side information may be ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from valfusion.data.split import DataSplit

__all__ = [
    "GalleryDataset",
    "QueryBatch",
    "QueryDataset",
    "QuerySample",
    "TripletBatch",
    "TripletDataset",
    "TripletSample",
    "collate_queries",
    "collate_triplets",
]


@dataclass
class TripletSample:
    """One training triplet.

    Attributes:
        reference: reference image ``(3, H, W)``.
        text: the modification text.
        target: target image ``(3, H, W)`` (the first correct target).
        side_info: side information of the target, or ``None`` when it has none.
        index: position of the triplet in its split.
    """

    reference: Tensor
    text: str
    target: Tensor
    side_info: str | None
    index: int


@dataclass
class TripletBatch:
    """A batch of training triplets.

    Attributes:
        reference: ``(B, 3, H, W)``.
        text: ``B`` strings.
        target: ``(B, 3, H, W)``.
        side_info: ``B`` strings or ``None`` (mask those out of the visual-semantic loss).
        index: ``(B,)`` int64 positions in the split.
    """

    reference: Tensor
    text: list[str]
    target: Tensor
    side_info: list[str | None]
    index: Tensor


@dataclass
class QuerySample:
    """One evaluation query.

    Attributes:
        reference: reference image ``(3, H, W)``.
        text: the modification text.
        index: position of the query in its split.
    """

    reference: Tensor
    text: str
    index: int


@dataclass
class QueryBatch:
    """A batch of queries.

    Attributes:
        reference: ``(B, 3, H, W)``.
        text: ``B`` strings.
        index: ``(B,)`` int64 positions in the split.
    """

    reference: Tensor
    text: list[str]
    index: Tensor


class TripletDataset(Dataset[TripletSample]):
    """Training samples of a split: ``(reference, text, target, target side information)``.

    A triplet with several correct targets trains on its first one.

    Args:
        split: the split to read.
    """

    def __init__(self, split: DataSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.triplets)

    def __getitem__(self, index: int) -> TripletSample:
        triplet = self.split.triplets[index]
        images = self.split.images
        return TripletSample(
            reference=images(triplet.reference),
            text=triplet.text,
            target=images(triplet.target),
            side_info=self.split.side_info.get(triplet.target),
            index=index,
        )


class QueryDataset(Dataset[QuerySample]):
    """The queries of a split, for encoding at evaluation: ``(reference image, text)``.

    Args:
        split: the split to read.
    """

    def __init__(self, split: DataSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.triplets)

    def __getitem__(self, index: int) -> QuerySample:
        triplet = self.split.triplets[index]
        return QuerySample(self.split.images(triplet.reference), triplet.text, index)


class GalleryDataset(Dataset[Tensor]):
    """The gallery images of a split, in gallery order; items are ``(3, H, W)`` tensors.

    The default collate stacks them to ``(B, 3, H, W)``.

    Args:
        split: the split to read.
    """

    def __init__(self, split: DataSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.gallery)

    def __getitem__(self, index: int) -> Tensor:
        return self.split.images(self.split.gallery[index])


def collate_triplets(samples: Sequence[TripletSample]) -> TripletBatch:
    """Stack training samples into a :class:`TripletBatch`.

    Args:
        samples: ``B`` samples with images of one shape ``(3, H, W)``.

    Returns:
        The batch: images ``(B, 3, H, W)``, lists of texts and side information, ``index (B,)``.
    """
    return TripletBatch(
        reference=torch.stack([s.reference for s in samples]),
        text=[s.text for s in samples],
        target=torch.stack([s.target for s in samples]),
        side_info=[s.side_info for s in samples],
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
    )


def collate_queries(samples: Sequence[QuerySample]) -> QueryBatch:
    """Stack queries into a :class:`QueryBatch`.

    Args:
        samples: ``B`` queries with reference images ``(3, H, W)``.

    Returns:
        The batch: ``reference (B, 3, H, W)``, ``B`` texts, ``index (B,)``.
    """
    return QueryBatch(
        reference=torch.stack([s.reference for s in samples]),
        text=[s.text for s in samples],
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
    )
