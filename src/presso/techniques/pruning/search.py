"""How slim (a structure change) and unstructured pruning (an optional stage) join ``presso search``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Values
from presso.techniques.tuning import recovery_choices, recovery_values


def _slim_choices(model: SpaceModel, on: Callable[[Values], bool]) -> list[Choice]:
    transformer = model.kind == "transformer"
    if transformer:
        out = [
            Choice("slim.heads", (0.0, 0.25, 0.5), on, "attention heads removed per layer"),
            Choice("slim.ffn", (0.25, 0.5, 0.75), on, "feed-forward neurons removed per layer"),
        ]
    else:
        ratios = (0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
        out = [Choice("slim.ratio", ratios, on, "channels / neurons removed per layer")]
    return out + recovery_choices("slim", on, transformer, l1=True)


def _slim_options(values: Values, model: SpaceModel) -> dict[str, Any]:
    if model.kind == "transformer":
        opts = {"heads": values["slim.heads"], "ffn": values["slim.ffn"]}
    else:
        opts = {"ratio": values["slim.ratio"]}
    # A trial is exactly the point the sampler chose: no milder retry (see search.space).
    return {**opts, **recovery_values("slim", values), "backoff": 0}


def _slim_describe(o: dict[str, Any]) -> str:
    return f"ratio {o['ratio']:g}" if "ratio" in o else f"heads {o['heads']:g} ffn {o['ffn']:g}"


SLIM = SearchEntry(
    family="slim",
    slot="structure",
    kinds=frozenset({"torch", "transformer"}),
    order=10,
    choices=_slim_choices,
    options=_slim_options,
    describe=_slim_describe,
    summary="remove channels / heads",
)


def _prune_choices(model: SpaceModel, on: Callable[[Values], bool]) -> list[Choice]:
    return [
        Choice("prune.sparsity", (0.5, 0.7, 0.8, 0.9, 0.95), on, "fraction of weights zeroed"),
        Choice("prune.scope", ("global", "layer"), on, "one ranking over all layers, or per layer"),
        *recovery_choices("prune", on, model.kind == "transformer", l1=True),
    ]


def _prune_options(values: Values, model: SpaceModel) -> dict[str, Any]:
    return {
        "sparsity": values["prune.sparsity"],
        "scope": values["prune.scope"],
        **recovery_values("prune", values),
        "backoff": 0,
    }


PRUNE = SearchEntry(
    family="prune",
    slot="optional",
    kinds=frozenset({"torch"}),
    order=30,
    choices=_prune_choices,
    options=_prune_options,
    describe=lambda o: f"{o['sparsity']:.0%} {o['scope']}",
    summary="unstructured pruning (zeros stored as a bitmask)",
)
