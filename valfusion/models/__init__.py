"""valfusion.models: the reference end-to-end VAL model."""

from valfusion.models.val import BACKBONES, VAL, CompositionOutput, SearchResult, VALConfig

__all__ = ["BACKBONES", "VAL", "CompositionOutput", "SearchResult", "VALConfig"]
