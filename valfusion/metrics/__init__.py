"""Retrieval metrics: exact, fast Recall@K under named gallery protocols.

- :func:`recall_at_k` / :class:`RecallResult`: Recall@K of query embeddings against a
  gallery, chunked (memory ``chunk_size x G``), ties broken by lower gallery index.
- :class:`RecallAtK`: the same as a ``torchmetrics.Metric`` (batch updates, DDP-ready).
- :func:`recall_subset`: CIRR's Recall_subset@K (each query ranks only its candidate
  subset); :func:`top_k`: the first K of each query's ranking (submissions).
- :func:`build_retrieval_setup` / :class:`RetrievalSetup`: the ``"val"`` and ``"original"``
  gallery protocols, with each query's targets and excluded reference image.
"""

from valfusion.metrics.protocols import (
    PROTOCOLS,
    RetrievalSetup,
    build_retrieval_setup,
    gallery_hash,
)
from valfusion.metrics.recall import RecallResult, recall_at_k
from valfusion.metrics.recall_metric import RecallAtK
from valfusion.metrics.subset import recall_subset, top_k

__all__ = [
    "PROTOCOLS",
    "RecallAtK",
    "RecallResult",
    "RetrievalSetup",
    "build_retrieval_setup",
    "gallery_hash",
    "recall_at_k",
    "recall_subset",
    "top_k",
]
