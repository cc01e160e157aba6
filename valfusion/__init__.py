"""valfusion: drop-in fusion layers for composed image retrieval, built around VAL (CVPR 2020)."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from valfusion._version import __version__

# A library's logger: records go where the application sends them (the `valfusion`
# command shows them on stderr), never to stderr by default.
logging.getLogger(__name__).addHandler(logging.NullHandler())

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
    "Combiner": "valfusion.layers",
    "ImageOnly": "valfusion.layers",
    "TextOnly": "valfusion.layers",
    "build_composer": "valfusion.layers",
    "COMPOSERS": "valfusion.layers",
    "get_backend": "valfusion.layers",
    "set_backend": "valfusion.layers",
    "use_backend": "valfusion.layers",
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
    "DataError": "valfusion.data",
    "DataSplit": "valfusion.data",
    "RetrievalData": "valfusion.data",
    "SyntheticBenchmark": "valfusion.data",
    "load_source": "valfusion.data",
    "load_folder": "valfusion.data",
    "write_folder": "valfusion.data",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from valfusion.data import (
        DataError,
        DataSplit,
        RetrievalData,
        SyntheticBenchmark,
        Triplet,
        load_folder,
        load_source,
        write_folder,
    )
    from valfusion.encoders import (
        FeaturePyramid,
        LSTMTextEncoder,
        SmallConvPyramid,
        TimmPyramid,
        TorchvisionResNetPyramid,
        Vocabulary,
        load_word_vectors,
        tokenize,
    )
    from valfusion.layers import (
        COMPOSERS,
        TIRG,
        Combiner,
        CompositeAttention,
        CompositeTransformer,
        ConcatFusion,
        ImageOnly,
        JointAttentionalPreservation,
        MultiLevelComposer,
        SelfAttentionalTransformation,
        TextImageFusion,
        TextOnly,
        build_composer,
        get_backend,
        set_backend,
        use_backend,
    )
    from valfusion.losses import (
        BatchClassificationLoss,
        BidirectionalTripletLoss,
        HierarchicalMatchingLoss,
        HierarchicalMatchingOutput,
        batch_classification_loss,
        bidirectional_triplet_loss,
        gather_with_grad,
    )
    from valfusion.metrics import (
        RecallAtK,
        RecallResult,
        RetrievalSetup,
        build_retrieval_setup,
        recall_at_k,
    )
    from valfusion.models import VAL, VALConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'valfusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
