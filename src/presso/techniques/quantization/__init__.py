"""Quantization techniques."""

from presso.techniques.quantization.config import Int8Config

__all__ = ["Int8Config"]
