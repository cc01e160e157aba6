"""Gallery protocols: which images form the gallery, and each query's targets and exclusion.

Published composed-retrieval numbers differ mostly by gallery definition, so the
protocol is an explicit, named choice that travels with every result:

- ``"val"`` (VAL protocol): the gallery is the union of the reference and target images
  of the evaluation queries, duplicates removed (FashionIQ val: 2628 / 3089 / 2902 images
  for dress / shirt / toptee).
- ``"original"`` (original FashionIQ protocol): the gallery is a given full image list,
  e.g. the whole image split of the category (3817 / 6346 / 5373).

Every query's own reference image is removed from its ranking.

This module describes data (ids, indices, a fingerprint) and imports nothing that
computes a metric; :func:`~valfusion.metrics.recall_at_k` takes a setup through ``setup=``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from valfusion.metrics._checks import MISSING_POLICIES, Missing, check_choice

__all__ = ["PROTOCOLS", "RetrievalSetup", "build_retrieval_setup", "gallery_hash"]

PROTOCOLS = ("val", "original")
"""Names of the gallery protocols :func:`build_retrieval_setup` implements."""

Protocol = Literal["val", "original"]


@dataclass(frozen=True, eq=False)
class RetrievalSetup:
    """A gallery and, for each query, its correct targets and its excluded reference.

    Embed the gallery in the order of ``gallery_ids`` and the queries in the order they
    were given to :func:`build_retrieval_setup`, then call
    ``recall_at_k(query_embeddings, gallery_embeddings, setup=setup)``.

    Attributes:
        protocol: ``"val"`` or ``"original"``.
        gallery_ids: gallery image ids, sorted (so the gallery does not depend on query
            order), ``G`` of them.
        targets: gallery indices of each query's correct targets, ``(Q, P)`` long, ``-1``
            padded; a row of ``-1`` is a query without a target in the gallery (only kept
            when ``missing == "miss"``).
        exclude: gallery index of each query's reference image, ``(Q,)`` long, ``-1`` when
            the reference is not in the gallery.
        gallery_hash: :func:`gallery_hash` of ``gallery_ids``.
        missing: the policy the setup was built with (``"error"`` or ``"miss"``);
            :func:`~valfusion.metrics.recall_at_k` applies it by default.
    """

    protocol: str
    gallery_ids: tuple[str, ...]
    targets: Tensor
    exclude: Tensor
    gallery_hash: str
    missing: Missing = "error"

    @property
    def gallery_size(self) -> int:
        """Number of gallery images ``G``."""
        return len(self.gallery_ids)

    @property
    def num_queries(self) -> int:
        """Number of queries ``Q``."""
        return self.exclude.shape[0]


def gallery_hash(ids: Sequence[str]) -> str:
    """Short fingerprint of a gallery: the first 12 hex digits of the SHA-256 of its sorted ids.

    ``sha256("\\n".join(sorted(set(ids))).encode("utf-8")).hexdigest()[:12]``; two results
    with the same hash were computed on the same set of gallery images.

    Args:
        ids: gallery image ids (any order, duplicates ignored).

    Returns:
        12 lowercase hex digits.
    """
    text = "\n".join(sorted(set(ids)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def build_retrieval_setup(
    references: Sequence[str],
    targets: Sequence[str | Sequence[str]],
    protocol: Protocol = "val",
    images: Sequence[str] | None = None,
    missing: Missing = "error",
) -> RetrievalSetup:
    """Build the gallery, target indices and exclusions of a query set under a protocol.

    Args:
        references: reference image id of each query, ``Q`` of them.
        targets: correct target id(s) of each query: an id, or a sequence of ids
            (several correct targets, e.g. Fashion200k), ``Q`` entries.
        protocol: ``"val"`` (gallery = references and targets of the queries, duplicates
            removed) or ``"original"`` (gallery = ``images``).
        images: the full image list for ``"original"`` (duplicates removed); must be None
            for ``"val"``.
        missing: a query with no correct target in the gallery (targets absent from
            ``images``, or a target equal to the query's own reference, which is
            excluded): ``"error"`` raises, ``"miss"`` keeps the query as a certain miss.

    Returns:
        A :class:`RetrievalSetup`: ``targets`` ``(Q, P)``, ``exclude`` ``(Q,)``.

    Raises:
        ValueError: mismatched lengths, no queries, non-string ids, an unknown protocol or
            policy, ``images`` missing for ``"original"`` or given for ``"val"``, or (by
            default) a query without a correct target in the gallery.
    """
    check_choice(protocol, "protocol", PROTOCOLS)
    check_choice(missing, "missing", MISSING_POLICIES)
    references = _ids(references, "references")
    if isinstance(targets, str) or not isinstance(targets, Sequence):
        raise ValueError(
            f"targets: expected a sequence with one id or id list per query, got {type(targets).__name__}"
        )
    if len(targets) != len(references):
        raise ValueError(
            f"targets: expected one entry per query (len(references) = {len(references)}), "
            f"got {len(targets)}"
        )
    if not references:
        raise ValueError("references: expected at least one query, got an empty sequence")
    target_lists = [
        (t,) if isinstance(t, str) else _ids(t, f"targets[{i}]") for i, t in enumerate(targets)
    ]

    if protocol == "val":
        if images is not None:
            raise ValueError(
                "images: only used by protocol='original' (the 'val' gallery is built from the "
                "queries); pass images=None"
            )
        pool = set(references).union(*target_lists)
    else:
        if images is None:
            raise ValueError("images: protocol='original' needs the full image list, got None")
        pool = set(_ids(images, "images"))
        if not pool:
            raise ValueError("images: expected at least one image id, got an empty sequence")
    gallery_ids = tuple(sorted(pool))
    position = {image: i for i, image in enumerate(gallery_ids)}

    exclude = torch.tensor([position.get(ref, -1) for ref in references], dtype=torch.long)
    rows = [
        [position[t] for t in dict.fromkeys(ts) if t in position and t != ref]
        for ref, ts in zip(references, target_lists)
    ]
    unanswerable = [i for i, row in enumerate(rows) if not row]
    if unanswerable and missing == "error":
        shown = [(i, references[i], target_lists[i]) for i in unanswerable[:3]]
        raise ValueError(
            f"targets: {len(unanswerable)} of {len(rows)} queries have no correct target in the "
            f"{protocol!r} gallery (absent, or equal to the excluded reference), e.g. "
            f"(query, reference, targets) {shown}; pass missing='miss' to count them as misses"
        )
    width = max(max((len(row) for row in rows), default=1), 1)
    padded = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return RetrievalSetup(
        protocol=protocol,
        gallery_ids=gallery_ids,
        targets=padded,
        exclude=exclude,
        gallery_hash=gallery_hash(gallery_ids),
        missing=missing,
    )


def _ids(values: Sequence[str], name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"{name}: expected a sequence of string ids, got {type(values).__name__}")
    values = list(values)
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected string ids, got {value!r} ({type(value).__name__})")
    return values
