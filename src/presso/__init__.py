"""presso: compress trained models for fast CPU inference, and prove it.

>>> import presso
>>> example = presso.load_example("digits")           # doctest: +SKIP
>>> result = presso.compress(example.model, "int8", data=example.data)  # doctest: +SKIP
>>> result.save("digits-int8")                          # doctest: +SKIP
>>> presso.load("digits-int8").predict(example.data.inputs["x"][:4])  # doctest: +SKIP
"""

from __future__ import annotations

from presso.errors import BudgetError, PressoError
from presso.version import __version__

# Public names imported on first use: `import presso` stays light (no torch, no ONNX Runtime).
_FUNCTIONS = {
    "compress": "presso.recipe.runner",
    "distill": "presso.recipe.distill",
    "factorize": "presso.techniques.lowrank.api",
    "fake_quantize": "presso.techniques.quantization.quantizers",
    "load": "presso.export.predictor",
    "load_example": "presso.examples",
    "serve": "presso.serving.server",
    "serve_app": "presso.serving.app",
    "unpack": "presso.export.packed",
}
# The technique configs a recipe is written with in Python:
# ``presso.compress(model, [presso.Slim(ratio=0.65), presso.Int8()], data=...)``.
_CONFIGS = {
    "Int8": ("presso.techniques.quantization.config", "Int8Config"),
    "Int4": ("presso.techniques.quantization.config", "Int4Config"),
    "WeightOnly": ("presso.techniques.quantization.config", "WeightOnlyConfig"),
    "KMeans": ("presso.techniques.quantization.config", "KMeansConfig"),
    "QAT": ("presso.techniques.quantization.qat_config", "QATConfig"),
    "Hashed": ("presso.techniques.quantization.hashing_config", "HashedConfig"),
    "Prune": ("presso.techniques.pruning.config", "PruneConfig"),
    "Slim": ("presso.techniques.pruning.config", "SlimConfig"),
    "Factorize": ("presso.techniques.lowrank.config", "FactorizeConfig"),
    "Distill": ("presso.techniques.distill.config", "DistillConfig"),
    "Pack": ("presso.techniques.storage_config", "PackConfig"),
}
_OTHER = {
    "Recipe": ("presso.recipe.schema", "Recipe"),
    "Stage": ("presso.recipe.schema", "Stage"),
    "BenchSettings": ("presso.measure.bench", "BenchSettings"),
    "RunSettings": ("presso.recipe.run", "RunSettings"),
}

__all__ = ["BudgetError", "PressoError", "__version__", *_FUNCTIONS, *_CONFIGS, *_OTHER]


def __getattr__(name: str):
    import importlib

    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in _CONFIGS or name in _OTHER:
        module, attr = _CONFIGS.get(name) or _OTHER[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'presso' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
