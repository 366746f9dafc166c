"""How the weight formats join ``presso search``: one ``weights`` slot, int8 / kmeans / int4."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Values

ALL_KINDS = frozenset({"torch", "transformer", "onnx", "callable"})


def _int8_choices(model: SpaceModel, on: Callable[[Values], bool]) -> list[Choice]:
    variants = (
        ("dynamic", "dynamic-smooth")
        if model.kind == "transformer"
        else ("dynamic", "static-s8s8", "static-u8s8")
    )
    out = [Choice("int8.variant", variants, on, "ONNX Runtime int8 kernels")]
    out += [
        Choice(f"int8.float.{node}", (False, True), on, f"keep {node} in float") for node in model.onnx_nodes
    ]
    return out


def _int8_options(values: Values, model: SpaceModel) -> dict[str, Any]:
    opts: dict[str, Any] = {"variants": [values["int8.variant"]]}
    kept = [node for node in model.onnx_nodes if values.get(f"int8.float.{node}")]
    if kept:
        opts["keep_float"] = kept
    return opts


def _int8_describe(o: dict[str, Any]) -> str:
    return o["variants"][0] + (f" ({len(o['keep_float'])} float)" if o.get("keep_float") else "")


INT8 = SearchEntry(
    family="int8",
    slot="weights",
    kinds=ALL_KINDS,
    order=50,
    choices=_int8_choices,
    options=_int8_options,
    describe=_int8_describe,
)

KMEANS = SearchEntry(
    family="kmeans",
    slot="weights",
    kinds=frozenset({"torch", "onnx"}),
    order=60,
    choices=lambda model, on: [
        Choice("kmeans.bits", (3, 4, 5, 6), on, "bits per weight index (2^bits shared values per layer)")
    ],
    options=lambda values, model: {"bits": values["kmeans.bits"]},
    describe=lambda o: f"{o['bits']} bits",
)

INT4 = SearchEntry(
    family="int4",
    slot="weights",
    kinds=frozenset({"onnx"}),
    order=70,
    choices=lambda model, on: [],
    options=lambda values, model: {},
    describe=lambda o: "",
)
