"""Techniques: each a typed config plus a transform, registered in one explicit table."""

from presso.techniques.registry import TECHNIQUES, Technique, get_technique

__all__ = ["TECHNIQUES", "Technique", "get_technique"]
