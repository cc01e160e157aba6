"""valfusion: drop-in fusion layers for composed image retrieval, built around VAL (CVPR 2020)."""

from __future__ import annotations

import importlib
from typing import Any

from valfusion._version import __version__

# Public name -> defining subpackage. Resolved lazily (PEP 562) so that importing
# valfusion stays cheap and optional extras are only needed by what uses them.
_EXPORTS: dict[str, str] = {
    # layers
    "TextImageFusion": "valfusion.layers",
    "SelfAttentionalTransformation": "valfusion.layers",
    "JointAttentionalPreservation": "valfusion.layers",
    "CompositeTransformer": "valfusion.layers",
    "CompositeAttention": "valfusion.layers",
    "MultiLevelComposer": "valfusion.layers",
    "TIRG": "valfusion.layers",
    "ConcatFusion": "valfusion.layers",
    "ImageOnly": "valfusion.layers",
    "TextOnly": "valfusion.layers",
    "build_composer": "valfusion.layers",
    "COMPOSERS": "valfusion.layers",
    # losses
    "batch_classification_loss": "valfusion.losses",
    "BatchClassificationLoss": "valfusion.losses",
    "bidirectional_triplet_loss": "valfusion.losses",
    "BidirectionalTripletLoss": "valfusion.losses",
    "HierarchicalMatchingLoss": "valfusion.losses",
    "HierarchicalMatchingOutput": "valfusion.losses",
    "gather_with_grad": "valfusion.losses",
    # metrics
    "recall_at_k": "valfusion.metrics",
    "RecallResult": "valfusion.metrics",
    "RecallAtK": "valfusion.metrics",
    "RetrievalSetup": "valfusion.metrics",
    "build_retrieval_setup": "valfusion.metrics",
    # encoders
    "Vocabulary": "valfusion.encoders",
    "tokenize": "valfusion.encoders",
    "LSTMTextEncoder": "valfusion.encoders",
    "load_word_vectors": "valfusion.encoders",
    "FeaturePyramid": "valfusion.encoders",
    "SmallConvPyramid": "valfusion.encoders",
    "TorchvisionResNetPyramid": "valfusion.encoders",
    "TimmPyramid": "valfusion.encoders",
    # models
    "VAL": "valfusion.models",
    "VALConfig": "valfusion.models",
    # data
    "Triplet": "valfusion.data",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'valfusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
