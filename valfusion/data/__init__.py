"""valfusion.data: triplet sources (synthetic benchmark, generic folder, FashionIQ, Shoes, Fashion200k)."""
from valfusion.data.triplet import Triplet

__all__ = ["Triplet"]
