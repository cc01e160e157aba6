"""Batch-based classification: a softmax over the batch's targets for every query.

The pairwise loss of the VAL paper (and what TIRG calls "batch-based classification").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from valfusion._validation import check_positive_number, fmt_shape
from valfusion.losses._pairs import check_has_negatives, check_pair, compute_dtype, normalize
from valfusion.losses.distributed import gather_candidates

__all__ = ["BatchClassificationLoss", "batch_classification_loss"]


def _check_temperature(temperature: object, name: str = "temperature") -> None:
    if isinstance(temperature, Tensor):
        # A tensor's value is not checked: reading it would synchronise with the device.
        if temperature.numel() != 1:
            raise ValueError(
                f"{name}: expected a scalar tensor, got shape {fmt_shape(temperature)}"
            )
        return
    check_positive_number(temperature, name)


def batch_classification_loss(
    query: Tensor,
    target: Tensor,
    temperature: float | Tensor = 0.1,
    *,
    gather: bool = True,
) -> Tensor:
    """Cross-entropy of each query over all targets in the batch, its own target the class.

    With rows L2-normalised, ``s_ij = <q_i, t_j>`` and temperature ``tau``:

    .. math::

        \\mathcal{L} = \\frac{1}{N} \\sum_{i=1}^{N}
            \\Big( -\\frac{s_{ii}}{\\tau} + \\log \\sum_{j=1}^{N} e^{s_{ij} / \\tau} \\Big)

    fp16/bf16 inputs are computed in fp32. Zero vectors normalise to zero (finite loss).

    Args:
        query: composed (query) embeddings, shape ``(B, D)``; row ``i`` pairs with ``target[i]``.
        target: target embeddings, shape ``(B, D)``.
        temperature: ``tau > 0``, a float or a scalar tensor (e.g. a learned one).
        gather: when ``torch.distributed`` is initialised with more than one process,
            score the local queries against the targets of the whole global batch
            (``N = sum`` of the local batch sizes). The returned value is then this rank's
            share, ``(W / N) sum_{local i} l_i`` (the local mean for equal shards), so its
            mean over ranks is the global loss and DDP-averaged gradients equal those of
            one process on the concatenated batch (see :mod:`valfusion.losses.distributed`).
            Every rank must call the loss. ``False`` uses only the local batch.

    Returns:
        Scalar loss, shape ``()``, in fp32 (fp64 for fp64 inputs).

    Raises:
        ValueError: if ``query``/``target`` are not floating ``(B, D)`` tensors of equal
            shape, if the (global) batch holds a single pair (no negatives), or if
            ``temperature`` is not positive.
    """
    query, target = check_pair(query, "query", target, "target")
    _check_temperature(temperature)
    dtype = compute_dtype(query, target)
    q, t = normalize(query, dtype), normalize(target, dtype)
    candidates = gather_candidates(t, gather=gather)
    check_has_negatives(candidates.count, query, "query")
    (targets,) = candidates.rows
    logits = q @ targets.T / temperature  # (B, N)
    labels = candidates.offset + torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, labels, reduction="sum") * candidates.scale


class BatchClassificationLoss(nn.Module):
    """Module form of :func:`batch_classification_loss`, owning a fixed or learned temperature.

    As TorchMultimodal's ``ContrastiveLossWithTemperature``, a learnable temperature is
    parametrised as ``logit_scale = log(1 / tau)`` and clamped (in place, at the start of
    every forward) to ``[log(1 / max_temperature), log(1 / min_temperature)]``, so the
    parameter itself never leaves the bounds. ``tau = exp(-logit_scale)``.

    Args:
        temperature: initial (or fixed) temperature ``tau > 0``.
        learnable_temperature: learn ``tau`` (registers the parameter ``logit_scale``,
            shape ``()``); otherwise ``tau`` is a constant and the module has no parameters.
        min_temperature: lower bound of a learnable ``tau``.
        max_temperature: upper bound of a learnable ``tau``.
        gather: score local queries against the global batch under ``torch.distributed``
            (see :func:`batch_classification_loss`).

    Raises:
        ValueError: if a temperature is not positive, the bounds are not ordered, or a
            learnable initial temperature lies outside them.

    Shape:
        - query: ``(B, D)``
        - target: ``(B, D)``
        - output: ``()``
    """

    def __init__(
        self,
        temperature: float = 0.1,
        learnable_temperature: bool = False,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        _check_temperature(min_temperature, "min_temperature")
        _check_temperature(max_temperature, "max_temperature")
        if min_temperature > max_temperature:
            raise ValueError(
                f"min_temperature: expected <= max_temperature = {max_temperature}, "
                f"got {min_temperature}"
            )
        if learnable_temperature and not min_temperature <= temperature <= max_temperature:
            raise ValueError(
                f"temperature: a learnable temperature must start within "
                f"[min_temperature, max_temperature] = [{min_temperature}, {max_temperature}], "
                f"got {temperature}"
            )
        self.learnable_temperature = learnable_temperature
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.gather = gather
        self._fixed_temperature = float(temperature)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    @property
    def temperature(self) -> Tensor:
        """The current temperature ``tau`` (detached), shape ``()``."""
        if self.learnable_temperature:
            return self.logit_scale.detach().neg().exp()
        return torch.tensor(self._fixed_temperature)

    def forward(self, query: Tensor, target: Tensor) -> Tensor:
        """Clamp a learnable temperature, then :func:`batch_classification_loss`.

        Args:
            query: composed (query) embeddings, shape ``(B, D)``.
            target: target embeddings, shape ``(B, D)``; ``target[i]`` is ``query[i]``'s class.

        Returns:
            Scalar loss, shape ``()``.
        """
        if not self.learnable_temperature:
            return batch_classification_loss(
                query, target, self._fixed_temperature, gather=self.gather
            )
        with torch.no_grad():
            self.logit_scale.clamp_(
                math.log(1.0 / self.max_temperature), math.log(1.0 / self.min_temperature)
            )
        return batch_classification_loss(
            query, target, self.logit_scale.neg().exp(), gather=self.gather
        )

    def extra_repr(self) -> str:
        if self.learnable_temperature:
            return (
                f"temperature=learnable in [{self.min_temperature}, {self.max_temperature}], "
                f"gather={self.gather}"
            )
        return f"temperature={self._fixed_temperature}, gather={self.gather}"
