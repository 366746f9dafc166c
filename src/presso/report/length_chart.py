"""report.html's chart of a text model's latency against text length (tokens)."""

from __future__ import annotations

import numpy as np

from presso.report import svg
from presso.report.html_parts import figure
from presso.report.schema import Latency, Report

BINS = 10  # at most this many points per model: a median per band of lengths reads better than 200 dots


def length_bins(latency: Latency, bins: int = BINS) -> tuple[list[float], list[float], list[int]]:
    """Median tokens, median ms and call count of ``latency``'s samples per band of text
    length: one band per distinct length when there are few, else ``bins`` equal-width bands
    (empty ones left out)."""
    tokens = np.asarray(latency.sample_tokens, dtype=float)
    ms = np.asarray(latency.samples, dtype=float)
    if len(tokens) == 0 or len(tokens) != len(ms):
        return [], [], []
    distinct = np.unique(tokens)
    if len(distinct) <= bins:
        band = np.searchsorted(distinct, tokens)
    else:
        edges = np.linspace(tokens.min(), tokens.max(), bins + 1)
        band = np.clip(np.searchsorted(edges, tokens, side="right") - 1, 0, bins - 1)
    x, y, n = [], [], []
    for b in np.unique(band):
        inside = band == b
        x.append(round(float(np.median(tokens[inside])), 1))
        y.append(round(float(np.median(ms[inside])), 4))
        n.append(int(inside.sum()))
    return x, y, n


def length_chart(report: Report, width: float) -> str | None:
    """Batch-1 latency against text length, baseline and compressed (None: not a text model
    timed at real length, or a report written before the texts' lengths were recorded)."""
    models = [("baseline", report.baseline.latency_ms), ("compressed", report.compressed.latency_ms)]
    binned = {name: length_bins(lat) for name, lat in models if lat.sample_tokens}
    if not binned:
        return None
    series = [svg.Series(name, y, x=x) for name, (x, y, _) in binned.items()]
    chart = svg.line_chart(
        "latency-length",
        "Batch-1 latency against text length",
        series,
        x_label="text length",
        y_label="time per call",
        x_unit="tokens",
        y_unit="ms",
        include_zero=True,
        width=width,
    )
    fixed = report.compressed.fixed_length
    padded = (
        f" Padded to {fixed.tokens} tokens, every call takes the same: baseline "
        f"{report.baseline.fixed_length.latency_ms.p50:.3g} ms, compressed {fixed.latency_ms.p50:.3g} ms p50."
        if fixed is not None and report.baseline.fixed_length is not None
        else ""
    )
    calls = sum(sum(n) for _, _, n in binned.values())
    return figure(
        chart,
        "Median time of one call per band of text length: each call ran one held-out text at its "
        f"real length (tokens, special ones included; {calls} sampled calls in all).{padded}",
    )
