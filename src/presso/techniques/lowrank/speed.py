"""Does a factorized layer run faster? Measured on ONNX Runtime, not guessed from FLOPs.

At batch 1 a small layer is dominated by per-node overhead, so two thin MatMuls can be
slower than one dense one even at a rank that halves the multiply-adds (measured: a
64x64 Linear); a 1024-wide one is memory-bound and speeds up roughly with its weight
bytes. Each distinct (layer shape, input shape) is exported alone, dense and factorized
at a few ranks, and timed in interleaved rounds.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from presso.measure.bench import BenchSettings, clearly_slower, time_latency
from presso.techniques.lowrank.factorize import Selector, factorize_layer

# Factors must beat the dense layer by this much at the p50 (and in every round) to count
# as faster; smaller gains vanish in the model's other work and in run-to-run noise.
_MARGIN = 0.1
_PROBES = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)  # fractions of the parameters kept, probed
_SETTINGS = BenchSettings(rounds=5, round_seconds=0.05, threads=None)


def input_shapes(module: nn.Module, names: list[str], example: tuple[torch.Tensor, ...]) -> dict[str, tuple]:
    """Batch-1 input shape of each named layer, in the order the forward pass runs them."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(_module, args):  # returns None: a pre-hook's return value would replace the input
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [module.get_submodule(n).register_forward_pre_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            module(*[t[:1] for t in example])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _export(layer: nn.Module, shape: tuple, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            layer.eval(),
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            do_constant_folding=True,
        )
    return path


def _factorized(layer: nn.Module, keep: float) -> nn.Module | None:
    return factorize_layer(layer, "probe", Selector(keep=keep))[0]


def faster_at(
    layer: nn.Module, shape: tuple, candidates: dict[str, nn.Module], workdir: Path
) -> dict[str, bool]:
    """Which factorized ``candidates`` run clearly faster than ``layer`` on an input of ``shape``."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"dense": _export(layer, shape, workdir / "dense.onnx")}
    for k, m in candidates.items():
        paths[k] = _export(m, shape, workdir / f"{k}.onnx")
    timed = time_latency(
        paths, {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}, _SETTINGS
    )
    return {k: clearly_slower(timed["dense"], timed[k], _MARGIN) for k in candidates}


def speed_keep(layer: nn.Module, shape: tuple, workdir: Path) -> float | None:
    """The largest probed fraction of parameters kept at which the factors run clearly
    faster than the dense layer (the most faithful rank that still speeds up), or None."""
    probes = {f"keep-{k:g}": m for k in _PROBES if (m := _factorized(copy.deepcopy(layer), k)) is not None}
    if not probes:
        return None
    fast = faster_at(layer, shape, probes, workdir)
    kept = [float(k.split("-", 1)[1]) for k, ok in fast.items() if ok]
    return max(kept) if kept else None


def speed_selectors(
    module: nn.Module, names: list[str], shapes: dict[str, tuple], workdir: Path, log: Callable[[str], None]
) -> dict[str, Selector | None]:
    """Per layer: the selector of its fastest-still-faithful rank, or None where no rank is
    measurably faster (one measurement per distinct layer and input shape)."""
    seen: dict[tuple, float | None] = {}
    out: dict[str, Selector | None] = {}
    for j, name in enumerate(names):
        layer = module.get_submodule(name)
        if name not in shapes:  # not run by the forward pass: nothing to time
            out[name] = None
            continue
        weight = cast(torch.Tensor, layer.weight)  # names are Linear / Conv layers
        key = (type(layer).__name__, tuple(weight.shape), shapes[name])
        if key not in seen:
            log(f"factorize: timing ranks of {name} ({j + 1}/{len(names)})")
            seen[key] = speed_keep(layer, shapes[name], workdir / f"speed-{len(seen)}")
        out[name] = None if seen[key] is None else Selector(keep=seen[key])
    return out


def speeds_up(layer: nn.Module, factored: nn.Module, shape: tuple, workdir: Path) -> bool:
    return faster_at(layer, shape, {"factored": factored}, workdir)["factored"]
