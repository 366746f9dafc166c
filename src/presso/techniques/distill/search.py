"""How distillation joins ``presso search``: a structure change (train a smaller student)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presso.techniques.contract import Choice, SearchEntry, SpaceModel, Values
from presso.techniques.tuning import recovery_choices, recovery_values


def _has_spatial_conv(module: Any) -> bool:
    from torch import nn

    if module is None:
        return False
    return any(
        isinstance(m, nn.Conv1d | nn.Conv2d)
        and m.groups == 1
        and m.in_channels > 1
        and min(m.kernel_size) > 1
        for m in module.modules()
    )


def _choices(model: SpaceModel, on: Callable[[Values], bool]) -> list[Choice]:
    if model.kind == "callable":
        hidden = ("32", "64", "128", "32x32", "64x64", "128x128", "64x64x64")
        out = [Choice("distill.hidden", hidden, on, "student MLP hidden layer sizes")]
    else:
        widths = (0.25, 0.35, 0.45, 0.6, 0.8, 1.0)
        out = [
            Choice(
                "distill.width", widths, on, "fraction of channels / neurons (heads, FFN) the student keeps"
            )
        ]
        if model.kind == "transformer":
            # fractions of the teacher's layers (1.0: all), so any depth of encoder gets the same
            # choices; two thirds is the fast recipe's student
            out.append(
                Choice("distill.depth", (0.34, 0.5, 0.67, 0.83, 1.0), on, "share of encoder layers kept")
            )
        if _has_spatial_conv(model.module):
            out.append(
                Choice(
                    "distill.blocks",
                    ("standard", "separable"),
                    on,
                    "standard or depthwise-separable (MobileNet) convolutions",
                )
            )
    out += [
        Choice("distill.temperature", (1.0, 2.0, 4.0, 8.0), on, "soft-target temperature T"),
        Choice("distill.alpha", (0.5, 0.9, 1.0), on, "weight of the soft-target loss"),
    ]
    return out + recovery_choices("distill", on, model.kind == "transformer", temperature=False)


def _options(values: Values, model: SpaceModel) -> dict[str, Any]:
    opts: dict[str, Any]
    if model.kind == "callable":
        opts = {"student": "mlp", "hidden": [int(h) for h in str(values["distill.hidden"]).split("x")]}
    else:
        opts = {"width": values["distill.width"]}
        if values.get("distill.depth", 1.0) < 1.0:
            opts["depth"] = values["distill.depth"]
        if values.get("distill.blocks", "standard") != "standard":
            opts["blocks"] = values["distill.blocks"]
    opts.update(
        {
            "temperature": values["distill.temperature"],
            "alpha": values["distill.alpha"],
            **recovery_values("distill", values),
            "backoff": 0,
        }
    )
    return opts


def _describe(o: dict[str, Any]) -> str:
    if o.get("student") == "mlp":
        return "mlp " + "x".join(map(str, o["hidden"]))
    what = f"width {o['width']:g}" + (f" depth {o['depth']}" if "depth" in o else "")
    return what + (" separable" if o.get("blocks") == "separable" else "")


DISTILL = SearchEntry(
    family="distill",
    slot="structure",
    kinds=frozenset({"torch", "transformer", "callable"}),
    order=20,
    choices=_choices,
    options=_options,
    describe=_describe,
    summary="train a student",
)
