"""Accuracy-aware compression of weights: the one mechanism of every technique that
changes them (int8, int4, int3 and the other weight-only formats, k-means clustering,
hashing).

1. The technique's first choices (int8: each variant; the others: one) are written and
   scored on the calibration rows; those within the budget come first in ``ranked``.
2. Where none is, the sensitivity of every layer is measured once. With more than
   :data:`FULL_MEASURE_MAX` layers it comes from one pass (``layer_error.py``): the
   relative output error each layer adds by itself in the fully changed first choice, run
   once over the calibration rows; with fewer, it is the drop of the primary metric with
   *only that layer* changed, one scoring per layer (about what the search below costs
   anyway, and exact). The fewest most sensitive layers then move to the technique's next
   safer setting (more bits, more centroids), then to fp32, until the calibration score
   is within budget. The number of layers is found by doubling and bisection over that
   ranking, so a model with n layers costs one pass + O(log n) scorings (BERT-base: 72
   layers, about 10 scorings instead of 80). A one-pass ranking is only a proxy (a
   layer's own output error does not add up to the metric: a small error in a layer
   that writes the residual stream every later layer reads costs more than its rank
   says), so the k layers it moves often include some that are not needed: each of
   them is put back in turn, the lowest ranked first, and stays put back while the mix
   keeps within budget (at most :data:`MAX_PUT_BACK` more scorings).
3. The pipeline verifies ``ranked`` in order on the held-out rows and keeps the first one
   within budget. ``ranked`` is lazy: only when a candidate fails there is the next,
   safer mix built (sensitivity measured then if it was not yet): the fewest most
   sensitive layers whose calibration drop leaves the margin the held-out rows showed
   missing (the budget less the largest excess of a held-out drop over its calibration
   drop), and at least as many layers as far as in every mix that failed before; where no
   mix meets that margin, the one measured with the smallest calibration drop. At most
   :data:`MAX_MIXES` mixes are offered after the first choices; the stage refuses only
   when none of them passes.

A first choice that passes on both sets of rows costs nothing more than before.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from presso.techniques.base import Candidate, StageContext, StageResult

FP32 = "fp32"
# The fewest-layers mix, then two safer backups, each verified on the held-out rows.
MAX_MIXES = 3
# Up to this many layers, sensitivity is the metric drop of each layer changed alone (one
# scoring each, ~ what doubling and bisection cost: 1 + 2 log2 8 = 7); above, one pass.
FULL_MEASURE_MAX = 8
# Layers of a one-pass mix tried back at the first choice, one scoring each. Measured on
# a 4-layer MiniLM student (16 layers, 0.02 budget): the ranking moved 6 to fp32, the
# sixth of which won back more than the other five together; put back, 2 stay fp32.
MAX_PUT_BACK = 8

# attempt(variant name, {node: setting}) -> a scored candidate (score None when it failed)
Attempt = Callable[[str, dict[str, str]], Candidate]
# layers -> each layer's relative output error in the fully changed model, from one pass;
# None where it cannot be measured (the first choice was not written)
OnePass = Callable[[list[str]], dict[str, float] | None]


@dataclass
class MixedSearch:
    """What the mechanism measured: the candidate that passed (or None), the sensitivity
    of every layer, and every mix tried on the way."""

    chosen: Candidate | None
    sensitivity: dict[str, float] = field(default_factory=dict)  # metric drop, layer alone
    output_error: dict[str, float] = field(default_factory=dict)  # one-pass relative error
    tried: list[Candidate] = field(default_factory=list)
    # Other passing mixes at the chosen setting with more layers fallen back, fewest first.
    backups: list[Candidate] = field(default_factory=list)
    fallback_of: dict[str, dict[str, str]] = field(default_factory=dict)  # candidate -> fallbacks

    @property
    def precision(self) -> dict[str, str]:
        """Fallback setting per node of the chosen candidate (empty when none fell back)."""
        return self.fallback_of.get(self.chosen.name, {}) if self.chosen is not None else {}


def _passed(c: Candidate, target: float | None = None) -> bool:
    """Within the budget on the calibration rows, and within ``target`` when one is set."""
    if c.score is None or not c.score.passed:
        return False
    return target is None or c.score.drop <= target + 1e-12


def _written(c: Candidate) -> Path:
    """The file of a candidate that passed on the calibration rows, to time it."""
    # Its score was measured on that file: the attempts that drop a file (writing or
    # running it failed, int8 and weight_only) leave the score None, so a passing one has
    # it. A cast, not a check: unit tests drive decide() with file-less candidates and a
    # timer that ignores the paths.
    return cast(Path, c.path)


def sensitivities(
    layers: list[str], base: dict[str, str], attempt: Attempt, name: str, ctx: StageContext
) -> dict[str, float]:
    """Drop of the primary metric with only ``layer`` changed, for each layer."""
    out: dict[str, float] = {}
    for i, layer in enumerate(layers, 1):
        ctx.log(f"{name}: sensitivity of layer {i}/{len(layers)} ({layer})")
        alone = {**base, **{other: FP32 for other in layers if other != layer}}
        cand = attempt(f"{name}-only-{layer}", alone)
        # A layer whose change cannot even be written or run is maximally sensitive.
        out[layer] = cand.score.drop if cand.score is not None else float("inf")
    return out


class LayerFallback:
    """Mixes of one first choice: its ``k`` most sensitive layers at one safer setting.

    Each mix is written and scored once (a later, stricter search reuses it) and added to
    ``tried``; the sensitivity of the layers is measured on first need."""

    def __init__(
        self,
        layers: list[str],
        base: dict[str, str],
        attempt: Attempt,
        fallbacks: Sequence[str],
        name: str,
        ctx: StageContext,
        found: MixedSearch | None = None,
        tried: list[Candidate] | None = None,
        one_pass: OnePass | None = None,
    ):
        self.layers, self.base, self.attempt = layers, base, attempt
        self.fallbacks, self.name, self.ctx = list(fallbacks), name, ctx
        self.found = found if found is not None else MixedSearch(chosen=None)
        self.tried = tried if tried is not None else self.found.tried
        self.one_pass = one_pass
        self._mixes: dict[tuple[int, str], Candidate] = {}
        self._subsets: dict[tuple[frozenset[str], str], Candidate] = {}  # mixes with layers put back
        self._origin: dict[str, tuple[int, str]] = {}  # put-back mix -> the top-k mix it came from
        self.ranked_by_proxy = False  # the order came from one pass, not from the metric

    @functools.cached_property
    def order(self) -> list[str]:
        """The layers, most sensitive first."""
        errors = None
        if self.one_pass is not None and len(self.layers) > FULL_MEASURE_MAX:
            self.ctx.log(f"{self.name}: sensitivity of {len(self.layers)} layers from one pass")
            errors = self.one_pass(self.layers)
            if errors is not None and all(math.isinf(e) for e in errors.values()):
                # no layer's tensors were found in the changed model: the ranking would be
                # arbitrary, so measure each layer instead (slow but right)
                self.ctx.log(f"{self.name}: one-pass sensitivity found no layer; measuring each")
                errors = None
        if errors is not None:
            self.found.output_error.update(errors)
            self.ranked_by_proxy = True
            return sorted(self.layers, key=lambda n: -errors[n])
        sens = sensitivities(self.layers, self.base, self.attempt, self.name, self.ctx)
        self.found.sensitivity.update(sens)
        tie = self._tie_break(sens)
        return sorted(self.layers, key=lambda n: (-sens[n], -tie.get(n, 0.0)))

    def _tie_break(self, sens: dict[str, float]) -> dict[str, float]:
        """Each layer's one-pass output error where layers' metric drops tie (empty if none do).

        A coarse metric on few calibration rows often measures no drop for any layer alone
        (0.0 each: no row changes class) while the held-out rows still fail; ranked in graph
        order then, the layer that matters may be the last one tried. Its own output error,
        one more pass, orders the tied layers by what they change."""
        if self.one_pass is None or len(set(sens.values())) == len(sens):
            return {}
        errors = self.one_pass(self.layers)
        if errors is None or all(math.isinf(e) for e in errors.values()):
            return {}
        self.found.output_error.update(errors)
        self.ctx.log(f"{self.name}: layers with equal metric drops ranked by their one-pass output error")
        return errors

    def _measure(self, name: str, moved: list[str], level: str, task: str, words: str) -> Candidate:
        """The first choice with ``moved`` at ``level``, scored once and recorded as tried;
        its note lists the layers (``words`` says which they are)."""
        with self.ctx.progress.task(task):
            cand = self.attempt(name, {**self.base, **dict.fromkeys(moved, level)})
        shown = ", ".join(moved[:4]) + (" ..." if len(moved) > 4 else "")
        cand.note = (cand.note + "; " if cand.note else "") + f"{words} at {level}: {shown}"
        self.found.fallback_of[cand.name] = dict.fromkeys(moved, level)
        self.tried.append(cand)
        return cand

    def mix(self, k: int, level: str) -> Candidate:
        """The first choice with its ``k`` most sensitive layers at ``level``."""
        if (k, level) not in self._mixes:
            self._mixes[(k, level)] = self._measure(
                f"{self.name}+{k}-{level}",
                self.order[:k],
                level,
                f"{self.name}: {k} of {len(self.layers)} most sensitive layers at {level} "
                f"(mix {len(self._mixes) + 1}, bisection over the ranking)",
                f"{k} most sensitive layer(s)",
            )
        return self._mixes[(k, level)]

    def subset(self, moved: list[str], level: str, k: int) -> Candidate:
        """The first choice with ``moved`` (a subset of the ``k`` most sensitive layers,
        in ranking order) at ``level``; a prefix of the ranking is the top-k mix itself."""
        if moved == self.order[: len(moved)]:
            return self.mix(len(moved), level)
        key = (frozenset(moved), level)
        if key not in self._subsets:
            n = len(self._subsets) + 1
            cand = self._measure(
                f"{self.name}+{len(moved)}-{level}-p{n}",
                moved,
                level,
                f"{self.name}: {len(moved)} of the {k} most sensitive layers at {level} (put-back mix {n})",
                f"{len(moved)} layer(s)",
            )
            cand.note += (
                f" (of the {k} with the largest one-pass output error; the other {k - len(moved)} "
                "kept the first choice within budget)"
            )
            self._subsets[key] = cand
            self._origin[cand.name] = (k, level)
        return self._subsets[key]

    def put_back(self, k: int, level: str, target: float | None) -> Candidate:
        """The top-``k`` mix at ``level`` (within budget) with each of its layers put back
        at the first choice in turn, the lowest ranked first, while the mix stays within
        budget (and ``target``). Only after a one-pass ranking: the metric's own ranking
        leaves no layer to spare in the fewest count."""
        kept = self.order[:k]
        best = self.mix(k, level)
        if not self.ranked_by_proxy:
            return best
        for layer in list(reversed(self.order[:k]))[:MAX_PUT_BACK]:
            trial = [n for n in kept if n != layer]
            if not trial:
                break
            cand = self.subset(trial, level, k)
            if _passed(cand, target):
                kept, best = trial, cand
        return best

    def fewest(self, target: float | None = None, least: tuple[int, int] = (1, 0)) -> Candidate | None:
        """The mix with the fewest layers moved, at the first safer setting that has one,
        within the budget on the calibration rows (and within ``target``, a stricter drop).

        ``least`` = (k, i): only mixes that move at least k layers to ``fallbacks[i]`` or a
        safer setting, i.e. at least as safe as every mix that failed before."""
        k_min, first_level = least
        for level in self.fallbacks[first_level:]:
            # All layers at fp32 is the original model, not a compressed one.
            top = len(self.layers) - (1 if level == FP32 else 0)
            # Doubling finds a passing count; bisection then finds the smallest one.
            lo, k, hi = k_min - 1, max(k_min, 1), None
            while k <= top:
                if _passed(self.mix(k, level), target):
                    hi = k
                    break
                lo, k = k, (top if k < top < 2 * k else 2 * k)
            if hi is None:
                continue
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if _passed(self.mix(mid, level), target) else (mid, hi)
            return self.put_back(hi, level, target)
        return None

    def place(self, cand: Candidate) -> tuple[int, int]:
        """(layers moved, index of the setting in ``fallbacks``) of a mix; for a mix with
        layers put back, those of the top-k mix it came from (what a safer one must keep)."""
        if cand.name in self._origin:
            k, level = self._origin[cand.name]
            return k, self.fallbacks.index(level)
        return next((k, self.fallbacks.index(level)) for (k, level), c in self._mixes.items() if c is cand)

    def backups(self, chosen: Candidate | None) -> list[Candidate]:
        """Top-k mixes measured at ``chosen``'s setting, at least as safe, that pass, fewest first."""
        if chosen is None:
            return []
        k0, i0 = self.place(chosen)
        more = sorted(
            (k, c) for (k, level), c in self._mixes.items() if level == self.fallbacks[i0] and k >= k0
        )
        return [c for _, c in more if _passed(c) and c is not chosen]

    def closest(self, exclude: list[Candidate], least: tuple[int, int] = (1, 0)) -> Candidate | None:
        """The mix measured so far, at least as safe as ``least`` (see :meth:`fewest`) and
        not in ``exclude``, with the smallest calibration drop within budget (fewest layers
        moved, then the less safe setting, among equals)."""
        pool = [
            (c.score.drop, k, self.fallbacks.index(level), c)
            for (k, level), c in self._mixes.items()
            # score None never passes: the explicit test narrows the type
            if c.score is not None
            and _passed(c)
            and k >= least[0]
            and self.fallbacks.index(level) >= least[1]
        ]
        pool = [p for p in pool if all(p[3] is not e for e in exclude)]
        return min(pool, key=lambda p: p[:3])[3] if pool else None


def search(
    first: Candidate,
    layers: list[str],
    base: dict[str, str],
    attempt: Attempt,
    fallbacks: Sequence[str],
    name: str,
    ctx: StageContext,
) -> MixedSearch:
    """Fall back the fewest, most sensitive layers that bring ``first`` within budget on
    the calibration rows (no held-out check: :func:`decide` does the whole stage).

    ``first`` is the first choice with every layer changed (already scored); ``base``
    holds settings the user fixed (``keep_float``). ``fallbacks`` are the safer settings
    in the order to try, ending with ``"fp32"``.
    """
    found = MixedSearch(chosen=first if _passed(first) else None)
    if found.chosen is not None or not layers:
        return found
    mixes = LayerFallback(layers, base, attempt, fallbacks, name, ctx, found)
    found.chosen = mixes.fewest()
    found.backups = mixes.backups(found.chosen)
    return found


@dataclass
class Technique:
    """What :func:`decide` needs from a technique that changes weights."""

    layers: list[str]  # weighted layers that may move to a safer setting
    fallbacks: Sequence[str]  # the safer settings, in the order to try, fp32 last
    # (first choice the mixes start from, variant name, {node: setting}) -> scored candidate
    attempt: Callable[[Candidate, str, dict[str, str]], Candidate]
    # (candidate, {node: setting it fell back to}, what was measured) -> sets its per-layer
    # rows and notes (``cand.layers``, ``cand.notes``)
    finish: Callable[[Candidate, dict[str, str], MixedSearch], None]
    base: dict[str, str] = field(default_factory=dict)  # settings the user fixed (keep_float)
    rank: Callable[[list[Candidate]], list[Candidate]] = list  # orders the timed first choices
    # (first choice, layers) -> each layer's output error in it, from one pass (layer_error.py);
    # None: sensitivity is measured one layer at a time
    one_pass: Callable[[Candidate, list[str]], dict[str, float] | None] | None = None


def decide(first: list[Candidate], technique: Technique, ctx: StageContext) -> StageResult:
    """The stage's result from its scored first choices: those within budget on the
    calibration rows first (timed, in ``technique.rank`` order), then lazily the mixes of
    the most faithful one with the fewest most sensitive layers at a safer setting."""
    tried = list(first)
    passing = [c for c in first if _passed(c)]
    if passing:
        timings = ctx.time_models({c.name: _written(c) for c in passing})
        for c in passing:
            c.timed(timings[c.name])
        passing = technique.rank(passing)
    return StageResult(ranked=_ranked(first, passing, technique, ctx, tried), tried=tried)


def _target(offered: list[Candidate], ctx: StageContext) -> float | None:
    """The calibration drop the next mix must keep: the budget less the largest excess of a
    held-out drop over the calibration drop among the candidates that failed there."""
    gaps = [c.heldout_drop - c.score.drop for c in offered if c.heldout_drop is not None and c.score]
    return ctx.max_drop - max(gaps) if gaps else None


def _ranked(
    first: list[Candidate], passing: list[Candidate], technique: Technique, ctx: StageContext, tried: list
) -> Iterator[Candidate]:
    found = MixedSearch(chosen=None)
    for cand in passing:
        technique.finish(cand, {}, found)
        yield cand
    scored = [(c, c.score) for c in first if c.score is not None]
    # A single first choice that cannot be written or run may still work with its
    # culprit layer float (the culprit measures maximally sensitive).
    start = min(scored, key=lambda cs: cs[1].drop)[0] if scored else (first[0] if len(first) == 1 else None)
    if start is None or not technique.layers:
        return
    attempt = functools.partial(technique.attempt, start)
    one_pass = functools.partial(technique.one_pass, start) if technique.one_pass is not None else None
    mixes = LayerFallback(
        technique.layers,
        technique.base,
        attempt,
        technique.fallbacks,
        start.name,
        ctx,
        found,
        tried,
        one_pass,
    )
    offered, least = list(passing), (1, 0)
    for _ in range(MAX_MIXES):
        target = _target(offered, ctx)
        if target is not None:
            ctx.log(
                f"{start.name}: failed on the held-out rows; next mix within a calibration drop of {target:.4f}"
            )
        mix = mixes.fewest(target, least)
        if mix is None and target is not None:
            mix = mixes.closest(offered, least)
        if mix is None:
            return
        found.chosen = mix
        mix.timed(ctx.time_models({mix.name: _written(mix)})[mix.name])
        technique.finish(mix, found.fallback_of.get(mix.name, {}), found)
        offered.append(mix)
        yield mix
        # It failed on the held-out rows: the next one moves at least its layers, as far.
        k, i = mixes.place(mix)
        least = (max(least[0], k), max(least[1], i))


def each(ranked: Iterable[Candidate], fn: Callable[[Candidate], None]) -> Iterator[Candidate]:
    """``ranked`` (lazy), with ``fn`` applied to each candidate as it comes (torch stages
    attach their trained module)."""
    for cand in ranked:
        fn(cand)
        yield cand


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
        if node in found.output_error:
            row["output_error"] = round(found.output_error[node], 6)
        if node in fell_back and node in found.sensitivity:
            row["reason"] = (
                f"fell back to {fell_back[node]}: quantized alone it costs "
                f"{found.sensitivity[node]:.4f} of the primary metric"
            )
            drop = found.sensitivity[node]
            if node in found.output_error and list(found.sensitivity.values()).count(drop) > 1:
                row["reason"] += (
                    f", as much as other layers; its output error when quantized ranked it "
                    f"({found.output_error[node]:.4f} relative, one pass over the calibration rows)"
                )
        elif node in fell_back and node in found.output_error:
            row["reason"] = (
                f"fell back to {fell_back[node]}: among the layers with the largest output error "
                f"when quantized ({found.output_error[node]:.4f} relative, one pass over the calibration rows)"
            )
        out.append(row)
    return out
