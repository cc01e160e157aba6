"""Recall@K of a model on evaluation splits, under the split's gallery protocol.

The gallery of a :class:`~valfusion.data.split.DataSplit` was fixed by its loader under
the data's protocol (``"val"``, ``"original"``, ``"synthetic"``...); every query's
correct targets are gallery positions and its own reference image is excluded from its
ranking. Under a process group the queries and the gallery are embedded in shards: the
gallery shards are gathered, and :class:`~valfusion.metrics.RecallAtK` gathers the
queries' ranks, so every process returns the same numbers.

A CIRR split (:class:`~valfusion.data.cirr.CirrSplit`) is also scored by
Recall_subset@{1, 2, 3} (:func:`~valfusion.metrics.recall_subset`: each query ranks
only its ``img_set`` members, its reference removed), and its Recall@K cut-offs default
to CIRR's (1, 5, 10, 50).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from valfusion.data.cirr import CirrSplit
from valfusion.data.datasets import GalleryDataset, QueryDataset, collate_queries
from valfusion.data.split import DataSplit, RetrievalData
from valfusion.metrics import RecallAtK, gallery_hash, recall_at_k, recall_subset
from valfusion.models import VAL

__all__ = ["CIRR_KS", "CIRR_SUBSET_KS", "embed_images", "embed_split", "evaluate"]

DEFAULT_KS: tuple[int, ...] = (1, 10, 50)
CIRR_KS: tuple[int, ...] = (1, 5, 10, 50)
"""CIRR's Recall@K cut-offs (the default ``ks`` of a CIRR split)."""
CIRR_SUBSET_KS: tuple[int, ...] = (1, 2, 3)
"""CIRR's Recall_subset@K cut-offs."""


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_can_tokenize(model: VAL, what: str) -> None:
    """Raw text needs a tokenizer: a transformer encoder's own, or the LSTM's vocabulary.

    Raises:
        ValueError: Naming ``model``, if it is an LSTM model without a vocabulary.
    """
    if model.config.text_encoder == "lstm" and model.vocabulary is None:
        raise ValueError(f"model: needs a vocabulary to encode {what}")


def _model_device(model: VAL) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _embed_queries(model: VAL, dataset: Any, batch_size: int, num_workers: int) -> Tensor:
    device = _model_device(model)
    chunks = [torch.empty(0, model.embedding_dim, device=device)]
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_queries)
    for batch in loader:
        tokens, lengths = model.tokenize(batch.text)
        chunks.append(model.compose(batch.reference.to(device), tokens.to(device), lengths.to(device)))
    return torch.cat(chunks)


@torch.no_grad()
def embed_images(model: VAL, dataset: Any, batch_size: int = 256, num_workers: int = 0) -> Tensor:
    """Gallery embeddings of a dataset of images, in dataset order (no composition).

    Args:
        model: The model (used as it is: put it in eval mode first).
        dataset: Items are ``(3, H, W)`` image tensors (e.g.
            :class:`~valfusion.data.datasets.GalleryDataset`).
        batch_size: Images per forward pass.
        num_workers: ``DataLoader`` workers.

    Returns:
        ``(N, E)`` unit-norm embeddings on the model's device.
    """
    device = _model_device(model)
    chunks = [torch.empty(0, model.embedding_dim, device=device)]
    for images in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        chunks.append(model.encode_image(images.to(device)))
    return torch.cat(chunks)


def _gather_rows(local: Tensor, total: int, rank: int, world_size: int) -> Tensor:
    """Rows ``rank, rank + world, ...`` from each process -> all ``total`` rows in order."""
    rows = -(-total // world_size)
    padded = local.new_zeros(rows, local.shape[1])
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded)
    full = local.new_empty(total, local.shape[1])
    for r, piece in enumerate(pieces):
        count = len(range(r, total, world_size))
        full[r::world_size] = piece[:count]
    return full


def embed_split(
    model: VAL, split: DataSplit, *, batch_size: int = 256, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Embed every query and every gallery image of a split (eval mode, no gradients).

    Args:
        model: A :class:`~valfusion.models.VAL` that can tokenize text (an LSTM model
            needs its vocabulary).
        split: The evaluation split.
        batch_size: Images per forward pass.
        num_workers: ``DataLoader`` workers.

    Returns:
        ``(queries (Q, E), gallery (G, E))`` unit-norm embeddings, in the split's query
        and gallery orders, on the model's device.

    Raises:
        ValueError: If the model is an LSTM model without a vocabulary.
    """
    check_can_tokenize(model, "the queries' texts")
    was_training = model.training
    model.eval()
    try:
        queries = _embed_queries(model, QueryDataset(split), batch_size, num_workers)
        gallery = embed_images(model, GalleryDataset(split), batch_size, num_workers)
    finally:
        model.train(was_training)
    return queries, gallery


def _subset_indices(split: CirrSplit) -> list[list[int]]:
    index = split.gallery_index
    return [[index[m] for m in members] for members in split.members]


def _subset_hits(
    queries: Tensor, gallery: Tensor, split: CirrSplit, rows: Sequence[int], targets: list[list[int]],
    exclude: list[int],
) -> Tensor:
    """Per cut-off of :data:`CIRR_SUBSET_KS`, how many of the queries ``rows`` hit, ``(3,)`` long."""
    hits = torch.zeros(len(CIRR_SUBSET_KS), dtype=torch.long, device=gallery.device)
    if not rows:
        return hits
    subsets = _subset_indices(split)
    result = recall_subset(
        queries, gallery, subsets=[subsets[i] for i in rows], targets=[targets[i][0] for i in rows],
        exclude=[exclude[i] for i in rows], ks=CIRR_SUBSET_KS, missing="miss", return_topk=False,
    )
    for j, k in enumerate(CIRR_SUBSET_KS):
        hits[j] = int(((result.ranks >= 0) & (result.ranks < k)).sum())
    return hits


def _evaluate_split(
    model: VAL, split: DataSplit, ks: Sequence[int] | None, batch_size: int, num_workers: int
) -> dict[str, Any]:
    rank, world_size = _world()
    is_cirr = isinstance(split, CirrSplit)
    if isinstance(split, CirrSplit) and not split.has_targets:
        raise ValueError(
            f"data: CIRR split {split.name!r} has no public targets, so no recall; rank it for the "
            "evaluation server with valfusion.engine.write_cirr_submission (valfusion evaluate --submission)"
        )
    ks = tuple(ks) if ks is not None else (CIRR_KS if is_cirr else DEFAULT_KS)
    targets = split.target_indices()
    exclude = split.reference_indices()
    subset_recall: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        if world_size == 1:
            queries, gallery = embed_split(model, split, batch_size=batch_size, num_workers=num_workers)
            result = recall_at_k(
                queries, gallery, targets=targets, exclude=exclude, ks=ks, missing="miss", return_topk=False
            )
            recall = {f"recall@{k}": value for k, value in result.recall.items()}
            unanswerable = int((result.ranks < 0).sum())
            if isinstance(split, CirrSplit):
                hits = _subset_hits(queries, gallery, split, range(len(split)), targets, exclude)
                subset_recall = {f"recall_subset@{k}": int(h) / len(split) for k, h in zip(CIRR_SUBSET_KS, hits)}
        else:
            mine = list(range(rank, len(split.gallery), world_size))
            local = embed_images(model, Subset(GalleryDataset(split), mine), batch_size, num_workers)
            gallery = _gather_rows(local, len(split.gallery), rank, world_size)
            queries_mine = list(range(rank, len(split), world_size))
            metric = RecallAtK(gallery, ks=ks, missing="miss").to(gallery.device)
            if queries_mine:
                embedded = _embed_queries(model, Subset(QueryDataset(split), queries_mine), batch_size, num_workers)
                metric.update(
                    embedded,
                    targets=[targets[i] for i in queries_mine],
                    exclude=[exclude[i] for i in queries_mine],
                )
            recall = {name: float(value) for name, value in metric.compute().items()}
            local_ranks = torch.cat([torch.empty(0, dtype=torch.long, device=gallery.device), *metric.ranks])
            misses = (local_ranks < 0).sum().reshape(1)
            dist.all_reduce(misses)
            unanswerable = int(misses)
            if isinstance(split, CirrSplit):
                mine_queries = embedded if queries_mine else gallery.new_empty(0, gallery.shape[1])
                hits = _subset_hits(mine_queries, gallery, split, queries_mine, targets, exclude)
                dist.all_reduce(hits)
                subset_recall = {f"recall_subset@{k}": int(h) / len(split) for k, h in zip(CIRR_SUBSET_KS, hits)}
    finally:
        model.train(was_training)
    return {
        **recall,
        **subset_recall,
        "num_queries": len(split),
        "gallery_size": len(split.gallery),
        "gallery_hash": gallery_hash(split.gallery),
        "unanswerable_queries": unanswerable,
        "dropped_triplets": split.dropped_triplets,
        "missing_images": split.missing_images,
    }


def evaluate(
    model: VAL,
    data: RetrievalData | DataSplit,
    *,
    ks: Sequence[int] | None = None,
    batch_size: int = 256,
    protocol: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Recall@K of ``model`` on the evaluation split(s) of ``data``.

    ``R@K = #{queries whose best-ranked correct target is among the first K} / #queries``,
    ranking the split's gallery by cosine similarity to the composed query, the query's
    reference image excluded (ties: lower gallery index first). A query whose only
    target is its own reference counts as a miss (``unanswerable_queries``). Several
    evaluation splits (FashionIQ's categories) are evaluated one by one and the top-level
    recalls are their mean, the way FashionIQ results are reported.

    Args:
        model: A :class:`~valfusion.models.VAL` that can tokenize text; evaluated in eval
            mode, its training mode is restored afterwards.
        data: A :class:`~valfusion.data.split.RetrievalData` (all its evaluation splits)
            or a single :class:`~valfusion.data.split.DataSplit`.
        ks: Recall cut-offs; default (1, 10, 50), and CIRR's (1, 5, 10, 50) on a CIRR split.
        batch_size: Images per forward pass.
        protocol: The gallery protocol's name to record for a bare ``DataSplit``
            (a ``RetrievalData`` names its own).
        num_workers: ``DataLoader`` workers.

    Returns:
        ``{"recall@K": float in [0, 1] for each K, "protocol", "num_queries",
        "gallery_size", "gallery_hash", "unanswerable_queries", "dropped_triplets",
        "missing_images", "splits": {name: the same per split}}``, plus
        ``"recall_subset@K"`` for K in (1, 2, 3) on a CIRR split, and ``"data"`` and
        ``"caption_mode"`` for a ``RetrievalData``. Totals (queries, gallery sizes,
        dropped) are summed over splits; ``gallery_hash`` hashes the union of the
        galleries' ``split/id`` names.

    Raises:
        ValueError: If there is no evaluation split, the model has no vocabulary, or a
            CIRR split has no targets (``test1``: see :func:`write_cirr_submission`).
    """
    check_can_tokenize(model, "the queries' texts")
    if isinstance(data, RetrievalData):
        splits = dict(data.evaluation)
        protocol = data.protocol
    else:
        splits = {data.name: data}
    if not splits:
        raise ValueError("data: has no evaluation split (load it with the 'test' split)")
    per_split = {name: _evaluate_split(model, split, ks, batch_size, num_workers) for name, split in splits.items()}
    first = next(iter(per_split.values()))
    recall_keys = [key for key in first if key.startswith(("recall@", "recall_subset@"))]
    metrics: dict[str, Any] = {
        key: sum(m[key] for m in per_split.values()) / len(per_split) for key in recall_keys
    }
    metrics["protocol"] = protocol
    for key in ("num_queries", "gallery_size", "unanswerable_queries", "dropped_triplets", "missing_images"):
        metrics[key] = sum(m[key] for m in per_split.values())
    metrics["gallery_hash"] = (
        first["gallery_hash"]
        if len(splits) == 1
        else gallery_hash([f"{name}/{g}" for name, s in splits.items() for g in s.gallery])
    )
    if isinstance(data, RetrievalData):
        metrics["data"] = data.name
        metrics["caption_mode"] = data.caption_mode
    metrics["splits"] = per_split
    return metrics
