"""valfusion.losses: VAL's hierarchical matching and its two pairwise forms.

- :func:`batch_classification_loss` / :class:`BatchClassificationLoss`: softmax over the
  batch (the paper's form), fixed or learned temperature.
- :func:`bidirectional_triplet_loss` / :class:`BidirectionalTripletLoss`: triplet hinge
  with semi-hard negatives in both directions (the authors' release).
- :class:`HierarchicalMatchingLoss`: the per-level visual-visual terms plus the
  visual-semantic term, returning :class:`HierarchicalMatchingOutput`.
- :func:`gather_with_grad`: negatives from every process under ``torch.distributed``.
"""

from valfusion.losses.batch_classification import (
    BatchClassificationLoss,
    batch_classification_loss,
)
from valfusion.losses.distributed import gather_with_grad
from valfusion.losses.hierarchical_matching import (
    HierarchicalMatchingLoss,
    HierarchicalMatchingOutput,
)
from valfusion.losses.triplet import BidirectionalTripletLoss, bidirectional_triplet_loss

__all__ = [
    "BatchClassificationLoss",
    "BidirectionalTripletLoss",
    "HierarchicalMatchingLoss",
    "HierarchicalMatchingOutput",
    "batch_classification_loss",
    "bidirectional_triplet_loss",
    "gather_with_grad",
]
