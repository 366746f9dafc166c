"""Accuracy-aware mixed precision: measure each layer's sensitivity, then move the most
sensitive layers to a safer precision until the quality budget holds.

Sensitivity of a layer is the drop of the primary metric on the calibration rows when
*only that layer* is quantized (every other layer float). Layers then fall back in order
of sensitivity: first to the technique's safer precision (e.g. 8-bit weights for int4),
then to fp32. The number of layers that fall back is found by doubling and bisection,
so a model with n layers costs n + O(log n) scorings, and only when the plain variant
misses the budget. Every technique that quantizes layer by layer uses this one search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from presso.techniques.base import Candidate, StageContext

FP32 = "fp32"

# attempt(variant name, {node: precision}) -> a scored candidate (score None when it failed)
Attempt = Callable[[str, dict[str, str]], Candidate]


@dataclass
class MixedSearch:
    """Outcome of :func:`search`: the candidate that passed (or None), the sensitivity of
    every layer that was measured, and every candidate tried on the way."""

    chosen: Candidate | None
    sensitivity: dict[str, float] = field(default_factory=dict)
    tried: list[Candidate] = field(default_factory=list)
    # Other passing candidates with more layers fallen back, fewest first: tried in turn
    # when the chosen one misses the budget on the held-out rows.
    backups: list[Candidate] = field(default_factory=list)
    fallback_of: dict[str, dict[str, str]] = field(default_factory=dict)  # candidate -> fallbacks

    @property
    def precision(self) -> dict[str, str]:
        """Fallback precision per node of the chosen candidate (empty when none fell back)."""
        return self.fallback_of.get(self.chosen.name, {}) if self.chosen is not None else {}


def _passed(c: Candidate) -> bool:
    return c.score is not None and c.score.passed


def sensitivities(
    layers: list[str], base: dict[str, str], attempt: Attempt, name: str, ctx: StageContext
) -> dict[str, float]:
    """Drop of the primary metric with only ``layer`` quantized, for each layer."""
    out: dict[str, float] = {}
    for i, layer in enumerate(layers, 1):
        ctx.log(f"{name}: sensitivity of layer {i}/{len(layers)} ({layer})")
        alone = {**base, **{other: FP32 for other in layers if other != layer}}
        cand = attempt(f"{name}-only-{layer}", alone)
        # A layer whose quantization cannot even be written or run is maximally sensitive.
        out[layer] = cand.score.drop if cand.score is not None else float("inf")
    return out


def search(
    first: Candidate,
    layers: list[str],
    base: dict[str, str],
    attempt: Attempt,
    fallbacks: list[str],
    name: str,
    ctx: StageContext,
) -> MixedSearch:
    """Fall back the fewest, most sensitive layers that bring ``first`` within budget.

    ``first`` is the variant with every layer quantized (already scored); ``base`` holds
    precisions the user fixed (``keep_float``). ``fallbacks`` are the safer precisions in
    the order to try, ending with ``"fp32"``.
    """
    result = MixedSearch(chosen=first if _passed(first) else None)
    if result.chosen is not None or not layers:
        return result
    sens = sensitivities(layers, base, attempt, name, ctx)
    result.sensitivity = sens
    order = sorted(layers, key=lambda n: -sens[n])
    for level in fallbacks:
        # All layers at fp32 is the original model, not a compressed one.
        top = len(order) - 1 if level == FP32 else len(order)

        def trial(k: int, level: str = level) -> Candidate:
            precision = {**base, **{n: level for n in order[:k]}}
            cand = attempt(f"{name}+{k}-{level}", precision)
            cand.note = (cand.note + "; " if cand.note else "") + (
                f"{k} most sensitive layer(s) at {level}: {', '.join(order[:k][:4])}"
                + (" ..." if k > 4 else "")
            )
            result.fallback_of[cand.name] = {n: level for n in order[:k]}
            result.tried.append(cand)
            return cand

        # Doubling finds a passing count; bisection then finds the smallest one.
        passed: dict[int, Candidate] = {}
        lo, k, hit = 0, 1, None
        while k <= top:
            cand = trial(k)
            if _passed(cand):
                hit = (k, cand)
                passed[k] = cand
                break
            lo, k = k, (top if k < top < 2 * k else 2 * k)
        if hit is None:
            continue
        hi, best = hit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            cand = trial(mid)
            if _passed(cand):
                hi, best = mid, cand
                passed[mid] = cand
            else:
                lo = mid
        result.chosen = best
        result.backups = [passed[k] for k in sorted(passed) if k > hi]
        return result
    return result


def annotate(rows: list[dict], found: MixedSearch, precision: dict[str, str] | None = None) -> list[dict]:
    """Per-layer report rows with the measured sensitivity and why a layer fell back
    (``precision``: the fallbacks of the candidate the rows describe; default the chosen's)."""
    fell_back = found.precision if precision is None else precision
    out = []
    for row in rows:
        node = row.get("node")
        row = dict(row)
        if node in found.sensitivity:
            row["sensitivity"] = round(found.sensitivity[node], 6)
        if node in fell_back and node in found.sensitivity:
            row["reason"] = (
                f"fell back to {fell_back[node]}: quantized alone it costs "
                f"{found.sensitivity[node]:.4f} of the primary metric"
            )
        out.append(row)
    return out
