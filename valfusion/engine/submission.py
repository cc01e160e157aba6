"""CIRR test-server submissions: each query's ranked image ids, in the server's JSON format.

CIRR's test1 targets are not public; the authors' evaluation server scores two files::

    <split>_pred_ranks_recall.json         {"version": "rc2", "metric": "recall",
                                            "<pairid>": [50 image ids], ...}
    <split>_pred_ranks_recall_subset.json  {"version": "rc2", "metric": "recall_subset",
                                            "<pairid>": [3 image ids], ...}

The first holds the top 50 of each query's ranking of the whole split (its reference
removed), the second the top 3 of its ``img_set`` members (reference removed), both
under the ranking rule of :mod:`valfusion.metrics` (cosine similarity, ties by lower
gallery index). Files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from valfusion.data.cirr import CirrSplit
from valfusion.engine.evaluation import embed_split
from valfusion.engine.io import atomic_write_text
from valfusion.metrics import top_k
from valfusion.models import VAL

__all__ = ["CIRR_SUBMISSION_SIZES", "write_cirr_submission"]

CIRR_SUBMISSION_SIZES: dict[str, int] = {"recall": 50, "recall_subset": 3}
"""Image ids per query in each submission file, by its ``"metric"``."""


def write_cirr_submission(
    model: VAL,
    split: CirrSplit,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, Path]:
    """Rank every query of a CIRR split and write the two server files into ``out_dir``.

    Args:
        model: a :class:`~valfusion.models.VAL` with a vocabulary (evaluated in eval mode).
        split: a CIRR evaluation split (``load_cirr(..., eval_split="test1")``; ``"val"``
            works too, e.g. to check a submission against the public targets).
        out_dir: the folder to write (created if needed).
        batch_size: images per forward pass.
        num_workers: ``DataLoader`` workers.

    Returns:
        ``{"recall": path, "recall_subset": path}``: ``<split>_pred_ranks_<metric>.json``,
        each ``{"version": "rc2", "metric": metric, str(pairid): [image ids]}`` with
        :data:`CIRR_SUBMISSION_SIZES` ids per pairid (fewer only for a gallery or subset
        smaller than that).

    Raises:
        ValueError: ``split`` is not a :class:`~valfusion.data.cirr.CirrSplit`, or the model
            has no vocabulary.
    """
    if not isinstance(split, CirrSplit):
        raise ValueError(
            f"split: expected a CIRR split (valfusion.data.load_cirr), got {type(split).__name__} "
            f"{getattr(split, 'name', '')!r}"
        )
    queries, gallery = embed_split(model, split, batch_size=batch_size, num_workers=num_workers)
    exclude = split.reference_indices()
    index = split.gallery_index
    subsets = [[index[m] for m in members] for members in split.members]
    lists = {
        "recall": top_k(queries, gallery, k=CIRR_SUBMISSION_SIZES["recall"], exclude=exclude),
        "recall_subset": top_k(
            queries, gallery, k=CIRR_SUBMISSION_SIZES["recall_subset"], exclude=exclude, subsets=subsets
        ),
    }
    names = [split.names.get(image, image) for image in split.gallery]
    written: dict[str, Path] = {}
    for metric, ranked in lists.items():
        content: dict[str, object] = {"version": "rc2", "metric": metric}
        for pairid, row in zip(split.pairids, ranked.tolist()):
            content[str(pairid)] = [names[j] for j in row if j >= 0]
        # One line, as the examples: the recall file of the whole test1 split is about 4 MB
        # (the server takes up to 5 MB).
        written[metric] = atomic_write_text(
            Path(out_dir) / f"{split.name}_pred_ranks_{metric}.json", json.dumps(content) + "\n"
        )
    return written
