"""The one structure every data source maps onto: a (reference, text, targets) triplet."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Triplet"]


@dataclass(frozen=True)
class Triplet:
    """One composed-retrieval query with its correct answer(s).

    Attributes:
        reference: id (or path relative to the dataset root) of the reference image.
        text: the modification text ("is red with shorter sleeves").
        targets: ids of every correct target image (one or more).
        source: where the triplet came from, ``"file:line"``, for error messages.
    """

    reference: str
    text: str
    targets: tuple[str, ...]
    source: str | None = None

    @property
    def target(self) -> str:
        """The first (for single-target datasets: the only) correct target."""
        return self.targets[0]
