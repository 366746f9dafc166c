"""Compression techniques: each registers itself next to its code (see :mod:`.contract`)."""

from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Technique, technique
from presso.techniques.registry import get_technique, techniques

__all__ = ["Choice", "SearchEntry", "SpaceModel", "Technique", "get_technique", "technique", "techniques"]
