"""Built-in examples: small models trained on first use on real, offline data."""

from presso.examples.registry import EXAMPLES, Example, load_example

__all__ = ["EXAMPLES", "Example", "load_example"]
