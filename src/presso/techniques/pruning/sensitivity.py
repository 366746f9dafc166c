"""Per-layer sensitivity to pruning (Han et al. 2015) and per-layer ratios under a quality budget.

Prune one layer at a time to each level, measure how much the whole model's quality drops,
put the layer back, then choose per-layer sparsities from the curves::

    curves = sensitivity_curves(model, ["fc1", "fc2", "head"], evaluate)   # {name: [(level, drop)]}
    ratios = ratios_under_budget(curves, max_drop=0.01)                   # {name: sparsity}
    ratios = allocate(curves, sizes, target=0.8, max_drop=0.01)            # mean sparsity >= 0.8
    curves_table(curves)                                                   # rows for a report

``evaluate(model) -> float`` returns the quality *drop* against the unpruned model (higher
is worse, 0 for no change), e.g. ``1 - agreement`` with the original predictions or the
MSE against the original outputs. Curves are not guaranteed monotone: removing a weight can
cancel the error of removing another when inputs are correlated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.pruning.criteria import l2_norm
from presso.techniques.pruning.masks import (
    _check_sparsity,
    effective_weight,
    prunable_weights,
    unstructured_masks,
)

LEVELS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
KINDS = ("unstructured", "channels")

Curves = dict[str, list[tuple[float, float]]]


def _check_levels(levels, where: str) -> tuple[float, ...]:
    levels = tuple(levels)
    bad = [x for x in levels if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1]
    if not levels or bad or any(a >= b for a, b in pairwise(levels)):
        raise PressoError(
            f"The 'levels' {where} must be sparsities in (0, 1), strictly increasing, e.g. "
            f"{list(LEVELS)}. Got {list(levels)!r} instead."
        )
    return tuple(float(x) for x in levels)


def _param(layer: nn.Module, name: str) -> torch.Tensor | None:
    """The stored tensor behind ``layer.<name>`` (``<name>_orig`` when ``torch.nn.utils.prune`` masks it)."""
    if hasattr(layer, f"{name}_orig"):
        return getattr(layer, f"{name}_orig")
    return getattr(layer, name, None)


def _prune_layer(layer: nn.Module, level: float, kind: str, key: str) -> None:
    """Zero the ``level`` fraction of the layer's weights (or output channels with their bias)."""
    weight = _param(layer, "weight")
    assert weight is not None  # sensitivity runs on Linear / Conv layers only
    effective = effective_weight(layer)
    with torch.no_grad():
        if kind == "unstructured":
            scores = {key: effective.abs().cpu()}
            keep = unstructured_masks({key: effective}, level, scores=scores, scope="layer")[key]
            weight.mul_(keep.to(weight.device, weight.dtype))
            return
        norms = l2_norm(effective).cpu()  # (out,)
        drop = torch.argsort(norms, stable=True)[: round(level * norms.numel())].to(weight.device)
        weight[drop] = 0
        bias = _param(layer, "bias")
        if isinstance(bias, torch.Tensor):
            bias[drop] = 0


def _refresh_masked(layer: nn.Module) -> None:
    """Recompute ``weight = weight_orig * mask`` now, as the pruning hook does at each forward."""
    from torch.nn.utils import prune

    for hook in [h for h in layer._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]:
        hook(layer, None)


def sensitivity_curves(
    module: nn.Module,
    layers: Sequence[str],
    evaluate: Callable[[nn.Module], float],
    levels: Sequence[float] = LEVELS,
    kind: str = "unstructured",
    progress: Callable[[str], None] | None = None,
) -> Curves:
    """Quality drop of the whole model when only one layer is pruned, for each layer and level.

    ``kind="unstructured"`` zeroes the ``round(level * numel)`` smallest ``|w|`` of the layer
    (ties: earlier position first); ``kind="channels"`` zeroes the ``round(level * out)`` output
    channels of smallest L2 norm, rows / filters together with their bias entries. Every level
    starts from the original layer, and its weight and bias are restored bit for bit after each
    evaluation, also when ``evaluate`` raises. Layers masked by ``torch.nn.utils.prune`` are
    pruned through ``weight_orig`` (already-masked weights count as pruned).

    Returns ``{layer: [(level, drop), ...]}`` in the order of ``layers`` and ``levels``.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = torch.randn(8, 4)
    >>> ref = model(x).detach()
    >>> def mse_drop(m):
    ...     with torch.no_grad():
    ...         return float(((m(x) - ref) ** 2).mean())
    >>> curves = sensitivity_curves(model, ["0", "2"], mse_drop, levels=(0.5, 0.9))
    >>> [level for level, _ in curves["0"]]
    [0.5, 0.9]
    """
    levels = _check_levels(levels, "of sensitivity_curves()")
    if kind not in KINDS:
        raise PressoError(
            f"The 'kind' option of sensitivity_curves() must be one of {list(KINDS)}. Got {kind!r} instead."
        )
    layers = _check_layers(module, layers)
    return {name: _curve(module, name, evaluate, levels, kind, progress) for name in layers}


def _check_layers(module: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        raise PressoError(
            f"The 'layers' option must be a list of layer names, e.g. [{layers!r}]. "
            f"Got the string {layers!r} instead."
        )
    layers = list(layers)
    if not layers or len(set(layers)) != len(layers):
        raise PressoError(
            f"The 'layers' option must list distinct layer names, e.g. ['fc1', 'fc2']. "
            f"Got {layers!r} instead."
        )
    prunable = [k.removesuffix("weight").removesuffix(".") for k in prunable_weights(module)]
    for name in layers:
        if name not in prunable:
            raise PressoError(f"No Linear or Conv layer named {name!r} in the model; choose from {prunable}.")
    return layers


def _curve(
    module: nn.Module,
    name: str,
    evaluate: Callable[[nn.Module], float],
    levels: tuple[float, ...],
    kind: str,
    progress: Callable[[str], None] | None,
) -> list[tuple[float, float]]:
    """One layer's curve; the layer is restored from a saved copy after every level (also
    when ``evaluate`` raises), so each level starts from the original weights."""
    layer = module.get_submodule(name)
    saved = {
        p: t.detach().clone() for p in ("weight", "bias") if isinstance(t := _param(layer, p), torch.Tensor)
    }
    curve = []
    for level in levels:
        try:
            _prune_layer(layer, level, kind, f"{name}.weight")
            result = evaluate(module)
        finally:
            with torch.no_grad():
                for p, original in saved.items():
                    param = _param(layer, p)
                    assert param is not None  # saved holds only the tensors the layer has
                    param.copy_(original)
            _refresh_masked(layer)
        try:
            drop = float(result)
        except (TypeError, ValueError):
            raise PressoError(
                f"The 'evaluate' function must return the quality drop as a float; it "
                f"returned {result!r} for layer {name!r} at level {level:g}."
            ) from None
        curve.append((level, drop))
        if progress is not None:
            progress(f"sensitivity {name} @ {level:g} ({kind}): drop {drop:.6g}")
    return curve


def _check_curves(curves: Curves) -> None:
    if not isinstance(curves, dict) or not curves:
        raise PressoError(
            "The curves must be a non-empty dict {layer: [(level, drop), ...]}, as returned by "
            "sensitivity_curves()."
        )
    for name, curve in curves.items():
        try:
            levels = [lv for lv, _ in curve]
        except (TypeError, ValueError):
            raise PressoError(
                f"The curve of layer {name!r} must be a list of (level, drop) pairs, as "
                "returned by sensitivity_curves()."
            ) from None
        _check_levels(levels, f"of the curve of layer {name!r}")


def _check_number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PressoError(f"The '{key}' option must be a finite number. Got {value!r} instead.")
    return float(value)


def ratios_under_budget(curves: Curves, max_drop: float, floor: float = 0.0) -> dict[str, float]:
    """Per layer, the largest level whose solo drop is ``<= max_drop`` (the classic rule); ``floor``
    when no level passes. A NaN drop never passes.

    Examples
    --------
    >>> ratios_under_budget({"a": [(0.5, 0.001), (0.9, 0.2)], "b": [(0.5, 0.3)]}, max_drop=0.01)
    {'a': 0.5, 'b': 0.0}
    """
    _check_curves(curves)
    max_drop = _check_number(max_drop, "max_drop")
    floor = _check_sparsity(floor, "floor")
    return {
        name: max((lv for lv, d in curve if d <= max_drop), default=floor) for name, curve in curves.items()
    }


def allocate(curves: Curves, sizes: dict[str, int], target: float, max_drop: float) -> dict[str, float]:
    """Per-layer sparsities whose size-weighted mean reaches ``target`` where the curves allow it.

    The rule:

    1. start from :func:`ratios_under_budget` (``floor=0``);
    2. while ``sum(sizes[l] * r[l]) / sum(sizes) < target`` and some layer is below its top
       level, move one layer up to its next level: the layer with the smallest drop increase
       per pruned weight, ``(drop(next) - drop(now)) / (sizes[l] * (next - now))`` with
       ``drop(0) = 0``; ties go to the layer that comes first in ``curves``.

    Raised layers may exceed ``max_drop`` (the target wins); a start already at or above the
    target is returned unchanged, and if every layer reaches its top level first the mean
    stays below ``target``. ``sizes`` holds the prunable weight count of each layer of
    ``curves`` (extra names are ignored). Solo drops are summed implicitly: layers pruned
    together usually hurt more than any one alone, so check the result on the whole model.

    Examples
    --------
    >>> curves = {"a": [(0.5, 0.0), (0.9, 0.1)], "b": [(0.5, 0.0), (0.9, 0.5)]}
    >>> allocate(curves, {"a": 100, "b": 100}, target=0.7, max_drop=0.01)
    {'a': 0.9, 'b': 0.5}
    """
    _check_curves(curves)
    target = _check_sparsity(target, "target")
    for name in curves:
        n = sizes.get(name) if isinstance(sizes, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PressoError(
                f"The 'sizes' option must give a positive int weight count for layer {name!r} "
                f"(e.g. prunable_weights(model)['{name}.weight'].numel()). Got {n!r} instead."
            )
    ratios = ratios_under_budget(curves, max_drop)
    total = sum(sizes[n] for n in curves)

    def mean() -> float:
        return sum(sizes[n] * ratios[n] for n in curves) / total

    def drop_at(name: str, level: float) -> float:
        return 0.0 if level == 0 else dict(curves[name])[level]

    while mean() < target - 1e-12:  # tolerance: a mean equal to the target up to rounding meets it
        best = None  # (cost, name, next level)
        for name, curve in curves.items():
            now = ratios[name]
            nxt = next((lv for lv, _ in curve if lv > now), None)
            if nxt is None:
                continue
            cost = (drop_at(name, nxt) - drop_at(name, now)) / (sizes[name] * (nxt - now))
            if best is None or cost < best[0]:  # strict: the earlier layer wins a tie
                best = (cost, name, nxt)
        if best is None:
            break
        ratios[best[1]] = best[2]
    return ratios


def curves_table(curves: Curves) -> list[dict]:
    """One report row per layer: ``{"layer": name, "drop@0.5": 0.0012, ...}``, drops rounded to 6 decimals.

    Examples
    --------
    >>> curves_table({"fc1": [(0.5, 0.00123456789), (0.9, 0.25)]})
    [{'layer': 'fc1', 'drop@0.5': 0.001235, 'drop@0.9': 0.25}]
    """
    _check_curves(curves)
    return [
        {"layer": name, **{f"drop@{lv:g}": round(float(d), 6) for lv, d in curve}}
        for name, curve in curves.items()
    ]
