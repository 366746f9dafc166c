"""presso: compress trained models for fast CPU inference, and prove it.

>>> import presso
>>> example = presso.load_example("digits")           # doctest: +SKIP
>>> result = presso.compress(example.model, "int8", data=example.data)  # doctest: +SKIP
>>> result.save("digits-int8")                          # doctest: +SKIP
>>> presso.load("digits-int8").predict(example.data.inputs["x"][:4])  # doctest: +SKIP
"""

from __future__ import annotations

from presso.version import __version__

__all__ = [
    "BudgetError",
    "PressoError",
    "__version__",
    "compress",
    "distill",
    "factorize",
    "fake_quantize",
    "load",
    "load_example",
    "unpack",
]

from presso.errors import BudgetError, PressoError


def __getattr__(name: str):
    # Lazy: `import presso` must stay light (no torch/onnxruntime until used).
    if name == "compress":
        from presso.recipe.runner import compress

        return compress
    if name == "distill":
        from presso.recipe.distill import distill

        return distill
    if name == "factorize":
        from presso.techniques.lowrank.api import factorize

        return factorize
    if name == "fake_quantize":
        from presso.techniques.quantization.quantizers import fake_quantize

        return fake_quantize
    if name == "load":
        from presso.export.predictor import load

        return load
    if name == "load_example":
        from presso.examples import load_example

        return load_example
    if name == "unpack":
        from presso.export.packed import unpack

        return unpack
    raise AttributeError(f"module 'presso' has no attribute {name!r}")
