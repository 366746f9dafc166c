"""How low-rank factorization joins ``presso search``: an optional stage, with a per-layer
on/off choice on small models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Values


def _choices(model: SpaceModel, on: Callable[[Values], bool]) -> list[Choice]:
    out = [
        Choice("lowrank.ratio", (0.125, 0.25, 0.5), on, "rank kept, as a fraction of each layer's full rank")
    ]

    # Per-layer choices name the teacher's modules: a student with fewer blocks renames them.
    def per_layer(values: Values) -> bool:
        return on(values) and values.get("structure") != "distill"

    return out + [
        Choice(f"lowrank.layer.{layer}", (True, False), per_layer, f"factorize {layer}")
        for layer in model.layers
    ]


def _options(values: Values, model: SpaceModel) -> dict[str, Any] | None:
    opts: dict[str, Any] = {"ratio": values["lowrank.ratio"]}
    if any(f"lowrank.layer.{layer}" in values for layer in model.layers):
        opts["layers"] = [layer for layer in model.layers if values.get(f"lowrank.layer.{layer}")]
    # No layer chosen: no factorize stage, the later stages still run. A layer whose factors
    # would not save parameters stays whole; if none would, the (optional) stage is skipped.
    return opts if opts.get("layers", True) else None


def _describe(o: dict[str, Any]) -> str:
    return f"rank {o['ratio']:g}" + (f" {len(o['layers'])} layers" if "layers" in o else "")


LOWRANK = SearchEntry(
    family="lowrank",
    slot="optional",
    kinds=frozenset({"torch", "transformer"}),
    order=40,
    choices=_choices,
    options=_options,
    describe=_describe,
    summary="low-rank factors (SVD / Tucker-2)",
    excludes=("prune",),
    stage_optional=True,
)
