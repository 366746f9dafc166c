"""report.html: one self-contained page (inline CSS and SVG; no scripts, no network) with the evidence."""

from __future__ import annotations

from typing import TypedDict

from presso.report import svg
from presso.report.html_parts import esc, figure, table
from presso.report.length_chart import length_chart
from presso.report.schema import Report
from presso.report.table import budget_line, comparison_rows, latency_basis, memory_line

CSS = """
:root{--ink:#1b1f24;--muted:#57606a;--line:#d0d7de;--soft:#f6f8fa;--pass:#1a7f37;--fail:#cf222e}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:var(--ink);line-height:1.45}
main{max-width:66rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
h1{font-size:1.6rem;margin:0}h2{font-size:1.2rem;border-bottom:1px solid var(--line);padding-bottom:.3rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.title{display:flex;flex-wrap:wrap;align-items:center;gap:.4rem 1rem}
.badge{display:inline-block;padding:.2rem .75rem;border-radius:999px;font-weight:600;font-size:.9rem}
.badge.pass{background:var(--pass);color:#fff}.badge.fail{background:var(--fail);color:#fff}
.sub{color:var(--muted);margin:.3rem 0}.lead{font-size:1.2rem;font-weight:600;margin:.6rem 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));gap:.75rem;margin:1rem 0}
.card{border:1px solid var(--line);border-radius:.5rem;padding:.6rem .9rem}
.card .k{color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:1.35rem;font-weight:700}.card .d{color:var(--muted);font-size:.85rem}
nav{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid var(--line);padding:.45rem 0;
display:flex;flex-wrap:wrap;gap:.15rem .9rem}
nav a{color:var(--muted);text-decoration:none;font-size:.9rem;white-space:nowrap}
nav a:hover{color:var(--ink)}
section{margin-top:2rem}
figure{margin:.5rem 0;border:1px solid var(--line);border-radius:.5rem;padding:.6rem}
figcaption{color:var(--muted);font-size:.85rem;margin-top:.35rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(19rem,1fr));gap:.75rem}
.grid figure{margin:0}
svg.plot{display:block;width:100%;height:auto}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.92rem}
th,td{border-bottom:1px solid var(--line);padding:.35rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:var(--soft)}
.pass{color:var(--pass);font-weight:600}.fail{color:var(--fail);font-weight:600}
.warn{border-left:4px solid #bf8700;background:#fff8c5;padding:.5rem .8rem}
pre{background:var(--soft);padding:1rem;overflow:auto}
li{margin:.2rem 0}details summary{cursor:pointer;color:var(--muted)}
footer{color:var(--muted);font-size:.8rem;margin-top:3rem}
@media print{nav{display:none}main{max-width:none;padding:0}figure,tr,.cards{break-inside:avoid}
.scroll{overflow:visible}table{font-size:8pt}body{font-size:10pt}.badge{print-color-adjust:exact}}
"""

_WIDE, _SMALL = 800, 330  # chart widths (px): full-width charts and the three side by side


class _SmallChart(TypedDict):
    """The keyword arguments the three side-by-side step charts share."""

    muted: list[int]
    width: float
    height: float


_NAV = [
    ("summary", "Summary"),
    ("steps", "Steps"),
    ("layer-sizes", "Layer sizes"),
    ("sensitivity", "Sensitivity"),
    ("latency", "Latency"),
    ("storage", "Storage"),
    ("variants", "Variants"),
    ("layers", "Layer tables"),
    ("data", "Data"),
    ("machine", "Machine"),
    ("recipe", "Recipe"),
]


def _points(metric: str) -> bool:
    """Metrics that are fractions of rows, so that a change reads best in percentage points."""
    return any(k in metric for k in ("accuracy", "agreement", "auc", "f1"))


def _times(x: float) -> str:
    """1.6x, but 1.01x rather than a misleading 1.0x."""
    return f"{x:.1f}x" if round(x, 1) != 1 else f"{x:.2f}x"


def summary_line(report: Report) -> str:
    """'3.2x smaller, 1.6x faster, accuracy -0.4 points' (what a reader wants first)."""
    b, base, comp = report.budget, report.baseline, report.compressed
    parts = []
    if base.size_bytes and comp.size_bytes:
        packed = f" ({_times(base.size_bytes / comp.stored_bytes)} packed)" if comp.stored_bytes else ""
        parts.append(f"{_times(base.size_bytes / comp.size_bytes)} smaller{packed}")
    speed = base.latency_ms.p50 / comp.latency_ms.p50 if comp.latency_ms.p50 > 0 else None
    if speed is not None:
        parts.append(f"{_times(speed)} faster" if speed >= 1 else f"{_times(1 / speed)} slower")
    delta = b.compressed - b.baseline
    if delta == 0:
        parts.append(f"{b.primary_metric} unchanged")
    elif b.kind == "relative" and b.baseline != 0:
        parts.append(f"{b.primary_metric} {delta / abs(b.baseline):+.1%}")
    elif _points(b.primary_metric):
        parts.append(f"{b.primary_metric} {100 * delta:+.1f} points")
    else:
        parts.append(f"{b.primary_metric} {delta:+.4f}")
    return ", ".join(parts)


def _mb(n) -> str:
    return "n/a" if n is None else (f"{n / 1e3:,.1f} kB" if n < 1e6 else f"{n / 1e6:,.2f} MB")


def _header(report: Report) -> str:
    b, base, comp = report.budget, report.baseline, report.compressed
    badge = (
        "<span class='badge pass'>\u2713 within budget</span>"
        if b.passed
        else "<span class='badge fail'>\u2717 over budget</span>"
    )
    cards = []
    if base.size_bytes and comp.size_bytes:
        cards.append(
            (
                "size",
                f"{base.size_bytes / comp.size_bytes:.2f}x smaller",
                f"{_mb(base.size_bytes)} \u2192 {_mb(comp.size_bytes)} (model.onnx)",
            )
        )
    else:
        cards.append(("size", _mb(comp.size_bytes), "model.onnx (the baseline's size is unknown)"))
    speed = base.latency_ms.p50 / comp.latency_ms.p50 if comp.latency_ms.p50 > 0 else None
    cards.append(
        (
            "speed",
            "n/a" if not speed else f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower",
            f"{base.latency_ms.p50:.3g} \u2192 {comp.latency_ms.p50:.3g} ms p50, {latency_basis(report)}",
        )
    )
    cards.append(
        (
            b.primary_metric,
            f"{b.baseline:.4f} \u2192 {b.compressed:.4f}",
            (
                f"{b.drop:+.2%} of at most {b.max_drop:.2%} ({b.kind}, held-out rows)"
                if b.kind == "relative"
                else f"drop {b.drop:.4f} of at most {b.max_drop:g} (held-out rows)"
            ),
        )
    )
    if report.stored is not None:
        cards.append(
            (
                "packed weights",
                f"{report.stored.weights_ratio:.1f}x smaller",
                f"{_mb(report.stored.weights_bytes)} vs {_mb(report.stored.fp32_weights_bytes)} fp32",
            )
        )
    card_html = "".join(
        f"<div class='card'><div class='k'>{esc(k)}</div><div class='v'>{esc(v)}</div>"
        f"<div class='d'>{esc(d)}</div></div>"
        for k, v, d in cards
    )
    return (
        f"<header><div class='title'><h1>{esc(report.model['name'])}</h1>{badge}</div>"
        f"<p class='sub'>{esc(report.task)} \u00b7 recipe <b>{esc(report.recipe['name'])}</b> \u00b7 "
        f"{esc(report.model['source'])} \u00b7 {esc(report.created)}</p>"
        f"<p class='lead'>{esc(summary_line(report))}</p><div class='cards'>{card_html}</div></header>"
    )


def _section(anchor: str, title: str, *parts: str) -> str:
    return f"<section id='{anchor}'><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def _summary(report: Report) -> str:
    b = report.budget
    verdict = (
        "<span class='pass'>within budget</span>" if b.passed else "<span class='fail'>over budget</span>"
    )
    return _section(
        "summary",
        "Baseline vs compressed",
        f"<p>Budget ({esc(b.meaning)}): {esc(budget_line(b))}: {verdict}.</p>",
        table(["", report.baseline.runtime, report.compressed.runtime, "ratio"], comparison_rows(report)),
        "<h3>Notes</h3><ul>"
        + "".join(f"<li>{esc(n)}</li>" for n in report.notes)
        + (f"<li>{esc(memory_line(report))}</li>" if report.run_memory is not None else "")
        + "</ul>",
    )


# ---------------------------------------------------------------- plots


def _steps(report: Report) -> str:
    steps, b = report.steps, report.budget
    if not steps:
        return "<p>This report has no per-stage steps (it was written before presso measured them).</p>"
    names = [s.name for s in steps]
    muted = [i for i, s in enumerate(steps) if s.skipped]
    size = [svg.Series("runnable (model.onnx)", [s.size_bytes for s in steps])]
    if any(s.stored_bytes is not None for s in steps):
        size.append(svg.Series("stored (packed)", [s.stored_bytes for s in steps]))
    budget = b.limit if b.limit is not None else b.baseline - b.max_drop
    rows = report.data.get("split", {}).get("evaluation_rows")
    on = f"the {rows} held-out rows" if rows else "the held-out rows"
    small: _SmallChart = {"muted": muted, "width": _SMALL, "height": 250}
    latency = [svg.Series("p50, batch 1", [s.latency_ms for s in steps])]
    quality = [svg.Series(b.primary_metric, [s.quality for s in steps])]
    known = {
        k: any(svg.number(v) is not None for v in vs[0].values)
        for k, vs in (("size", size), ("latency", latency))
    }
    charts = [
        figure(
            svg.bar_chart(
                "steps-size",
                "Size after each stage",
                names,
                size,
                value_label="size",
                unit="bytes",
                horizontal=False,
                show_values=True,
                **small,
            ),
            "Bytes of the runnable model.onnx after each stage"
            + (" and of the packed storage file." if len(size) > 1 else "."),
        )
        if known["size"]
        else "<figure><p>No step has a known size (a Python callable teacher has none "
        "until it is exported).</p></figure>",
        figure(
            svg.bar_chart(
                "steps-latency",
                "Latency after each stage",
                names,
                latency,
                value_label="p50, batch 1",
                unit="ms",
                horizontal=False,
                show_values=True,
                **small,
            ),
            "Median time of one batch-1 call, every step timed in the same interleaved rounds as the "
            "headline figures.",
        )
        if known["latency"]
        else "<figure><p>No step could be timed.</p></figure>",
        figure(
            svg.line_chart(
                "steps-quality",
                f"{b.primary_metric.capitalize()} after each stage",
                quality,
                x_label="step",
                y_label=b.primary_metric,
                categories=names,
                ref=(budget, f"budget {budget:.4f}"),
                **small,
            ),
            f"{b.primary_metric} on {on}; the dashed line is the budget's limit, {budget:.4g}.",
        ),
    ]
    return (
        "<p>The model after each stage of the recipe, from the baseline on"
        + (" (grey: a stage that was skipped)" if muted else "")
        + ".</p>"
        + f"<div class='grid'>{''.join(charts)}</div>"
    )


def _layer_sizes(report: Report) -> str:
    base = {r.node: r.bytes for r in report.layer_sizes.get("baseline", [])}
    comp = {r.node: r.bytes for r in report.layer_sizes.get("compressed", [])}
    if not base and not comp:
        return "<p>This report has no per-layer sizes.</p>"
    names = list(base) + [n for n in comp if n not in base]  # unmatched layers get bars of their own
    models = [(k, d) for k, d in (("baseline", base), ("compressed", comp)) if d]
    series = [svg.Series(k, [d.get(n) for n in names]) for k, d in models]
    # Entries under 0.2% of the largest (an activation's quantization scale: a few bytes) go to "other".
    size = {n: max(base.get(n, 0), comp.get(n, 0)) for n in names}
    shown = min(30, sum(v >= max(size.values()) / 500 for v in size.values()))
    chart = svg.bar_chart(
        "layer-sizes",
        "Stored bytes per layer",
        names,
        series,
        value_label="stored bytes",
        unit="bytes",
        max_bars=shown + 1,
        width=_WIDE,
    )
    how = (
        f"{sum(n in comp for n in base)} of {len(base)} baseline layers matched by node name"
        if base and comp
        else "one model only"
    )
    cap = f"; the {shown} largest are shown, the rest summed as other" if len(names) > shown else ""
    totals = ", ".join(f"{k} {sum(d.values()):,} bytes" for k, d in models)
    return figure(
        chart,
        "Bytes of each layer's weights, biases, scales and codebooks, read from the ONNX "
        f"files ({how}{cap}). Totals: {totals}.",
    )


def _row_name(row: dict) -> str:
    return str(row.get("layer") or row.get("node") or row.get("name") or "?")


def _drop_levels(rows: list[dict]) -> list[tuple[float, str]]:
    keys = {k for r in rows for k in r if k.startswith("drop@") and svg.number(k[5:]) is not None}
    return sorted((float(k[5:]), k) for k in keys)


def _stage_sensitivity(i: int, stage, metric: str, max_drop: float) -> str | None:
    """The best per-layer evidence one stage has: drop curves, sensitivity, else the weight error."""
    rows, tag = stage.layers, f"Stage {i} ({stage.technique}{', skipped' if stage.skipped else ''})"
    name = f"sensitivity-{i}"
    levels = _drop_levels(rows)
    if levels:
        worst = sorted(rows, key=lambda r: -max((svg.number(r.get(k)) or 0.0) for _, k in levels))[:8]
        series = [
            svg.Series(_row_name(r), [r.get(k) for _, k in levels], x=[lv for lv, _ in levels]) for r in worst
        ]
        shown = "" if len(rows) <= 8 else f", the 8 most sensitive of {len(rows)} layers"
        return figure(
            svg.line_chart(
                name,
                f"{tag}: drop vs sparsity per layer",
                series,
                x_label="sparsity",
                y_label=f"drop of {metric}",
                ref=(max_drop, f"budget {max_drop:g}"),
                width=_WIDE,
                height=340,
            ),
            f"{tag}: drop of {metric} on the calibration rows with only that layer pruned to each "
            f"sparsity, one line per layer{shown}; the dashed line is the budget.",
        )
    for key, what, caption in (
        (
            "sensitivity",
            f"drop of {metric}",
            f"drop of {metric} on the calibration rows with only that layer "
            "quantized (larger: more sensitive)",
        ),
        (
            "output_error",
            "relative output error",
            "each layer's relative output error ||y_q \u2212 y|| / ||y|| with the whole model "
            "quantized, from one pass over the calibration rows (it ranks the layers that fall "
            "back; larger: more sensitive)",
        ),
        (
            "relative_error",
            "relative weight error",
            "this stage measured no sensitivity, so this shows each "
            "layer's relative weight error ||w_q \u2212 w|| / ||w|| instead (0: unchanged)",
        ),
        (
            "frobenius_error",
            "weight error ||W \u2212 W_r||",
            "this stage measured no sensitivity, so this "
            "shows each layer's weight error ||W \u2212 W_r|| (Frobenius norm) instead",
        ),
    ):
        have = [r for r in rows if svg.number(r.get(key)) is not None]
        if have:
            chart = svg.bar_chart(
                name,
                f"{tag}: {what} per layer",
                [_row_name(r) for r in have],
                [svg.Series(what, [r[key] for r in have])],
                value_label=what,
                sort=True,
                max_bars=25,
                other="other ({k} layers, summed)",
                width=_WIDE,
                ref=(max_drop, f"budget {max_drop:g}") if key == "sensitivity" else None,
            )
            return figure(chart, f"{tag}: {caption}; most affected first.")
    return None


def _sensitivity(report: Report) -> list[str]:
    b = report.budget
    figs = [
        f
        for i, s in enumerate(report.stages, 1)
        if s.layers and (f := _stage_sensitivity(i, s, b.primary_metric, b.max_drop)) is not None
    ]
    return figs or [
        "<p>No stage of this run reported a per-layer sensitivity or weight error, "
        "so there is nothing per layer to plot.</p>"
    ]


def _latency(report: Report) -> str:
    base, comp = report.baseline.latency_ms, report.compressed.latency_ms
    if not base.samples and not comp.samples:
        return "<p>This report has no latency samples (it was written before presso recorded them).</p>"
    marks = [
        svg.Mark(j, v, label, dash)
        for j, lat in enumerate((base, comp))
        if lat.samples
        for v, label, dash in ((lat.p50, "p50", "5 3"), (lat.p95, "p95", "1.5 2.5"))
    ]
    series = [svg.Series("baseline", base.samples), svg.Series("compressed", comp.samples)]
    chart = svg.histogram(
        "latency", "Batch-1 call times", series, x_label="time per call", unit="ms", marks=marks, width=_WIDE
    )
    texts = ", each call one held-out text at its real length" if comp.basis == "real length" else ""
    histogram = figure(
        chart,
        f"How long single batch-1 calls took in the timing rounds{texts} (up to 200 per model, "
        "evenly subsampled in call order), with each model's p50 (dashed) and p95 (dotted).",
    )
    return histogram + (length_chart(report, _WIDE) or "")


def _storage(report: Report) -> str:
    st, size = report.stored, report.compressed.size_bytes
    if st is None:
        return "<p>This run wrote no packed storage file; model.onnx is what is stored and run.</p>"
    rows = [
        ["runnable model (model.onnx)", f"{size:,}" if size else "n/a", ""],
        [
            f"packed file ({st.file})",
            f"{st.bytes:,}",
            f"{size / st.bytes:.2f}x smaller than model.onnx" if size else "",
        ],
        [
            "\u2003weights, scales and codebooks (entropy-coded)",
            f"{st.weights_bytes:,}",
            f"{st.weights_ratio:.2f}x smaller than fp32",
        ],
        ["\u2003graph (compressed)", f"{st.graph_bytes:,}", ""],
        ["fp32 weights of the baseline (parameters x 4)", f"{st.fp32_weights_bytes:,}", ""],
        ["codecs", ", ".join(f"{c} ({n} tensor{'s' * (n != 1)})" for c, n in st.codecs.items()), ""],
    ]
    return (
        "<p>The packed file stores the same model for shipping; it is unpacked to model.onnx to run.</p>"
        + table(["", "bytes", "ratio"], rows)
    )


# ---------------------------------------------------------------- tables

# Per-layer columns in reading order; any other keys a technique reports follow them.
_LAYER_COLUMNS = [
    "node",
    "op",
    "precision",
    "granularity",
    "activations",
    "sensitivity",
    "output_error",
    "parameters",
    "stored_bytes",
    "relative_error",
    "reason",
]


_LAYER_NOTES = {
    "quantization": "sensitivity: drop of the primary metric on calibration rows with only that layer "
    "quantized (measured when the whole model missed the budget, up to 8 layers); output_error: "
    "||y_q - y|| / ||y|| of the layer's own output with the whole model quantized, one pass "
    "(larger models); relative_error: "
    "||w_q - w|| / ||w|| of the stored weight.",
    "prune": "sparsity: fraction of the layer's weights that are zero; drop@s: drop of the primary metric "
    "on calibration rows with only that layer pruned to sparsity s (its sensitivity curve, measured "
    "with scope: sensitivity and used to choose the per-layer sparsities).",
    "slim": "outputs / inputs: channels or neurons before -> after the physical removal.",
    "factorize": "method: svd = the Linear layer became two thin ones (W ~ U_r S_r V_r^T), tucker2 = the "
    "convolution became 1x1 -> core -> 1x1; rank: r, or R_out x R_in; macs: multiply-adds per "
    "input row (Linear) or output position (conv); frobenius_error: ||W - W_r||, for svd equal "
    "to the square root of the sum of the discarded squared singular values; relative_error: "
    "that / ||W||; reason: why a layer was left whole.",
    "sparse-storage": "storage: bitmask = a bit per weight plus the non-zero values; dense = left as is "
    "(too few zeros to pay).",
    "pack": "one row per stored tensor of model.packed; codec: the smallest lossless coding found for it "
    "(raw, lzma, shuffle = byte planes then LZMA, codebook = distinct values plus an index per "
    "element, nibbles = 4-bit halves, sparse = bitmask plus the non-zero elements); "
    "raw_bytes -> packed_bytes.",
}


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _layer_tables(report: Report) -> list[str]:
    parts = []
    for i, stage in enumerate(report.stages, 1):
        if not stage.layers:
            continue
        keys = {k for row in stage.layers for k in row}
        header = [c for c in _LAYER_COLUMNS if c in keys] + sorted(keys - set(_LAYER_COLUMNS))
        rows = [["" if row.get(k) is None else _cell(row.get(k)) for k in header] for row in stage.layers]
        note = _LAYER_NOTES.get(stage.technique, _LAYER_NOTES["quantization"])
        body = f"<p>{esc(note)}</p>" + table(header, rows)
        if len(rows) > 15:  # long tables fold, so that the page stays a page
            body = f"<details><summary>{len(rows)} layers</summary>{body}</details>"
        parts.append(f"<h3>Layers after stage {i} ({esc(stage.technique)})</h3>{body}")
    return parts or ["<p>No stage reported per-layer rows.</p>"]


def _variant_tables(report: Report) -> list[str]:
    parts = []
    for i, stage in enumerate(report.stages, 1):
        if not stage.variants:
            continue
        header = list(dict.fromkeys(k for v in stage.variants for k in v))
        rows = [[_cell(v.get(k, "")) for k in header] for v in stage.variants]
        chosen = f"chosen: {stage.chosen}" if stage.chosen else "none chosen"
        flags = "".join(
            f
            for f, on in ((", skipped", stage.skipped), (", resumed from a checkpoint", stage.resumed))
            if on
        )
        parts.append(f"<h3>Stage {i} ({esc(stage.technique)}; {esc(chosen)}{flags})</h3>")
        parts.append(table(header, rows))
        parts += [f"<p>{esc(n)}</p>" for n in stage.notes]
    return parts or ["<p>No variants were tried.</p>"]


def _data(report: Report) -> str:
    d, split = report.data, report.data.get("split", {})
    sample = d.get("sample")
    sampled = (
        f" (a seeded uniform sample of the file's {esc(sample.get('rows_in_file'))} rows: all of "
        f"them take more memory than --data-memory, {esc(sample.get('memory_budget_bytes'))} bytes)"
        if sample
        else ""
    )
    return _section(
        "data",
        "Data",
        f"<p>{esc(d.get('source'))}: {esc(d.get('rows'))} rows{sampled}, split by "
        f"{esc(split.get('method'))} (seed {esc(split.get('seed'))}) into "
        f"{esc(split.get('calibration_rows'))} calibration and "
        f"{esc(split.get('evaluation_rows'))} held-out evaluation rows. "
        f"{esc(split.get('note', ''))}.</p>" + _token_lengths(d),
    )


def _token_lengths(data: dict) -> str:
    """The held-out texts' lengths in tokens and the limit they were cut at (text data only)."""
    t = data.get("held_out_tokens")
    if not t:
        return ""
    cut = (
        "" if t.get("truncated") is None else f"; {t['truncated']} of {t['texts']} were longer and truncated"
    )
    return (
        f"<p>Held-out texts in tokens (special tokens included): median {t['median']:g}, "
        f"p95 {t['p95']:g}, longest {t['max']}, limit {esc(data.get('max_tokens'))} (--seq-len){esc(cut)}.</p>"
    )


def _nav(report: Report) -> list[tuple[str, str]]:
    return _NAV[:1] + [("search", "Search")] + _NAV[1:] if report.search is not None else _NAV


def _search(report: Report) -> str:
    if report.search is None:
        return ""
    from presso.report.search_html import search_section

    return _section("search", "Search: the Pareto front", search_section(report))


def render_html(report: Report) -> str:
    """The whole report page as one string: header with the verdict, plots, tables, recipe."""
    import yaml

    body = [
        _header(report),
        "<nav>" + "".join(f"<a href='#{a}'>{esc(t)}</a>" for a, t in _nav(report)) + "</nav>",
        _summary(report),
        _search(report),
        _section("steps", "Step by step", _steps(report)),
        _section("layer-sizes", "Where the bytes are", _layer_sizes(report)),
        _section("sensitivity", "Per-layer sensitivity", *_sensitivity(report)),
        _section("latency", "Latency distribution", _latency(report)),
        _section("storage", "Packed storage", _storage(report)),
        _section("variants", "Variants tried", *_variant_tables(report)),
        _section("layers", "Per-layer tables", *_layer_tables(report)),
        _data(report),
        _section(
            "machine",
            "Machine",
            table(
                ["", "value"],
                [[k, v] for k, v in report.machine.items()]
                + ([["command", report.command]] if report.command else []),
            ),
        ),
        _section("recipe", "Recipe", f"<pre>{esc(yaml.safe_dump(report.recipe, sort_keys=False))}</pre>"),
        f"<footer>Written by presso {esc(report.presso_version)} as one self-contained file (no scripts, "
        "no network). Hover a mark for its exact value.</footer>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>presso report: {esc(report.model['name'])}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>"
    )
