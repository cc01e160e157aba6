"""The ``ctx`` object the fused kernels' ``torch.autograd.Function``s receive, typed.

torch annotates it as ``FunctionCtx``, which declares ``save_for_backward`` for tensors
only (``None`` is accepted at run time) and neither ``saved_tensors`` nor
``needs_input_grad`` (the C++ base of the object autograd passes provides them). Each
kernel describes what its ``forward`` leaves for its ``backward`` in a sub-protocol.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

__all__ = ["AutogradContext"]


class AutogradContext(Protocol):
    """What every fused kernel uses of ``ctx``."""

    needs_input_grad: tuple[bool, ...]
    """One flag per input of ``forward``: whether its gradient is needed."""

    @property
    def saved_tensors(self) -> tuple[Tensor | None, ...]:
        """The tensors given to :meth:`save_for_backward`, in order."""
        ...

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        """Keep ``tensors`` for ``backward`` (``None`` entries stay ``None``)."""
        ...
