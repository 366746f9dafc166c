"""The techniques a recipe stage may name, and the one list of modules that define them.

Each technique registers itself with :func:`presso.techniques.contract.technique` in its own
module. Those modules import torch and ONNX Runtime, so they are imported here on first
use, not with ``import presso``. Techniques from other packages join through the
``presso.techniques`` entry point group (each entry names a module to import).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from presso.errors import PressoError
from presso.techniques.contract import REGISTERED, Technique

# Pipeline order: the order `presso techniques` and error messages list them in.
BUILT_IN = (
    "presso.techniques.quantization.int8",
    "presso.techniques.quantization.weight_only",  # int4 and weight-only
    "presso.techniques.quantization.clustering",  # kmeans
    "presso.techniques.quantization.qat_stage",
    "presso.techniques.quantization.hashing",
    "presso.techniques.pruning.prune_stage",
    "presso.techniques.pruning.slim_stage",
    "presso.techniques.lowrank.stage",
    "presso.techniques.distill.stage",
    "presso.techniques.storage",  # pack
)
PLUGIN_GROUP = "presso.techniques"

_loaded = False


def techniques() -> dict[str, Technique]:
    """Every registered technique by name (built-in ones first, then plugins and any
    registered at run time)."""
    global _loaded
    if not _loaded:
        for module in BUILT_IN:
            importlib.import_module(module)
        for entry in entry_points(group=PLUGIN_GROUP):
            try:
                importlib.import_module(entry.value.split(":", 1)[0])
            except Exception as exc:  # a broken plugin: one clear line naming it, not a traceback
                raise PressoError(
                    f"The presso technique plugin '{entry.name}' ({entry.value}) does not import: {exc}. "
                    "Fix or uninstall the package that provides it."
                ) from exc
        _loaded = True
    # Built-in ones in pipeline order, whichever module happened to be imported first.
    rank = {module: i for i, module in enumerate(BUILT_IN)}
    ordered = sorted(REGISTERED.values(), key=lambda t: rank.get(t.run.__module__, len(rank)))
    return {t.name: t for t in ordered}


def get_technique(name: str) -> Technique:
    try:
        return techniques()[name]
    except KeyError:
        raise PressoError(f"Unknown technique '{name}'. Available: {', '.join(techniques())}.") from None
