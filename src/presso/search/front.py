"""The Pareto front of finished trials, and picking one point of it.

A point is on the front when no other feasible point is at least as good on all three
objectives (quality drop, latency, size) and better on one. ``pick`` orders the front:

- ``quality``: the smallest drop (then latency, then size);
- ``latency``: the fastest (then drop, then size);
- ``size``: the smallest file (then latency, then drop);
- ``balanced``: the smallest sum of log latency and log size, each scaled to [0, 1] over the
  front (then drop): every point already meets the quality budget, and what a compression
  run is for is a faster and smaller model; logs because sizes span decades.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PICKS = ("quality", "latency", "size", "balanced")
# How far apart two trials' latencies, each timed at its own moment, may be and still be the
# other way round when timed together. Measured on digits (2 cores, 2 threads, ~15 us a call):
# the slim model, 1.26x faster than fp32 when timed together, was timed at 0.99x of it in its
# trial, and a deep-compression trial (as fast as fp32) slightly faster than slim.
LATENCY_NOISE = 0.3
_KEYS = ("drop", "latency_ms", "size_bytes")


def dominates(a: dict, b: dict) -> bool:
    return all(a[k] <= b[k] for k in _KEYS) and any(a[k] < b[k] for k in _KEYS)


def pareto_front(points: Sequence[dict]) -> list[dict]:
    """The non-dominated points (duplicates of a point on the front stay: same figures)."""
    return [p for p in points if not any(dominates(q, p) for q in points if q is not p)]


def near_front(points: Sequence[dict], latency_noise: float) -> list[dict]:
    """The points no other point beats for sure: the front, plus every point whose only
    dominators are faster by less than ``latency_noise`` (relative).

    Latencies measured at different moments are trusted to within that fraction only; the
    points kept here are re-timed together, and the front of those timings decides. The
    front is always a subset (a dominator faster beyond the noise is a dominator).
    """

    def beaten(b: dict, a: dict) -> bool:
        return (
            a["drop"] <= b["drop"]
            and a["size_bytes"] <= b["size_bytes"]
            and a["latency_ms"] * (1 + latency_noise) < b["latency_ms"]
        )

    return [p for p in points if not any(beaten(p, q) for q in points if q is not p)]


def ordered(front: Sequence[dict], pick: str) -> list[dict]:
    """The front, best first for ``pick``."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}; got {pick!r}")
    if pick == "quality":
        return sorted(front, key=lambda p: (p["drop"], p["latency_ms"], p["size_bytes"]))
    if pick == "latency":
        return sorted(front, key=lambda p: (p["latency_ms"], p["drop"], p["size_bytes"]))
    if pick == "size":
        return sorted(front, key=lambda p: (p["size_bytes"], p["latency_ms"], p["drop"]))
    keys = ("latency_ms", "size_bytes")
    logs = [{k: math.log(max(p[k], 1e-12)) for k in keys} for p in front]
    spans = {k: (min(x[k] for x in logs), max(x[k] for x in logs) - min(x[k] for x in logs)) for k in keys}

    def score(i: int) -> float:
        return sum((logs[i][k] - lo) / span if span > 0 else 0.0 for k, (lo, span) in spans.items())

    order = sorted(range(len(front)), key=lambda i: (score(i), front[i]["drop"], front[i]["latency_ms"]))
    return [front[i] for i in order]
