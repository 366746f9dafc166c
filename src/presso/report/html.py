"""report.html: one self-contained page (no scripts, no network) with the evidence."""

from __future__ import annotations

import html

from presso.report.schema import Report
from presso.report.table import comparison_rows

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:60rem;color:#1b1f24}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border-bottom:1px solid #d0d7de;padding:.35rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f6f8fa}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
pre{background:#f6f8fa;padding:1rem;overflow:auto}
li{margin:.2rem 0}
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# Per-layer columns in reading order; any other keys a technique reports follow them.
_LAYER_COLUMNS = ["node", "op", "precision", "granularity", "activations", "sensitivity",
                  "parameters", "stored_bytes", "relative_error", "reason"]


_LAYER_NOTES = {
    "quantization": "sensitivity: drop of the primary metric on calibration rows with only that layer "
                    "quantized (measured when the whole model missed the budget); relative_error: "
                    "||w_q - w|| / ||w|| of the stored weight.",
    "prune": "sparsity: fraction of the layer's weights that are zero; drop@s: drop of the primary metric on "
             "calibration rows with only that layer pruned to sparsity s (its sensitivity curve, measured with "
             "scope: sensitivity and used to choose the per-layer sparsities).",
    "slim": "outputs / inputs: channels or neurons before -> after the physical removal.",
    "factorize": "method: svd = the Linear layer became two thin ones (W ~ U_r S_r V_r^T), tucker2 = the "
                 "convolution became 1x1 -> core -> 1x1; rank: r, or R_out x R_in; macs: multiply-adds per "
                 "input row (Linear) or output position (conv); frobenius_error: ||W - W_r||, for svd equal to "
                 "the square root of the sum of the discarded squared singular values; relative_error: that / "
                 "||W||; reason: why a layer was left whole.",
    "sparse-storage": "storage: bitmask = a bit per weight plus the non-zero values; dense = left as is "
                      "(too few zeros to pay).",
}


def _layer_tables(report: Report) -> list[str]:
    parts = []
    for i, stage in enumerate(report.stages, 1):
        if not stage.layers:
            continue
        keys = {k for row in stage.layers for k in row}
        header = [c for c in _LAYER_COLUMNS if c in keys] + sorted(keys - set(_LAYER_COLUMNS))
        rows = [["" if row.get(k) is None else _cell(row.get(k)) for k in header] for row in stage.layers]
        parts += [f"<h2>Layers after stage {i} ({html.escape(stage.technique)})</h2>",
                  f"<p>{_LAYER_NOTES.get(stage.technique, _LAYER_NOTES['quantization'])}</p>",
                  _table(header, rows)]
    return parts


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render_html(report: Report) -> str:
    import yaml

    b = report.budget
    verdict = ('<span class="pass">within budget</span>' if b.passed
               else '<span class="fail">over budget</span>')
    variants = []
    for stage in report.stages:
        for v in stage.variants:
            variants.append([stage.technique, v.get("variant"),
                             *(str(x) for k, x in v.items() if k not in ("variant",))])
    variant_header = ["stage", "variant"]
    if report.stages and report.stages[0].variants:
        variant_header += [k for k in report.stages[0].variants[0] if k != "variant"]
    split = report.data["split"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>presso report: {html.escape(report.model['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>presso: {html.escape(report.model['name'])} ({html.escape(report.task)})</h1>",
        f"<p>{html.escape(report.model['source'])}; recipe <b>{html.escape(report.recipe['name'])}</b>; "
        f"{html.escape(report.created)}.</p>",
        f"<p>Budget: {html.escape(b.primary_metric)} may drop by at most {b.max_drop:g} "
        f"(absolute, held-out rows). Baseline {b.baseline:.4f}, compressed {b.compressed:.4f}, "
        f"drop {b.drop:.4f}: {verdict}.</p>",
        "<h2>Baseline vs compressed</h2>",
        _table(["", report.baseline.runtime, report.compressed.runtime, "ratio"], comparison_rows(report)),
        "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>",
        "<h2>Variants tried</h2>",
        _table(variant_header, variants),
        *_layer_tables(report),
        "<h2>Data</h2>",
        f"<p>{html.escape(report.data['source'])}: {report.data['rows']} rows, split by "
        f"{html.escape(split['method'])} (seed {split['seed']}) into {split['calibration_rows']} "
        f"calibration and {split['evaluation_rows']} held-out evaluation rows. "
        f"{html.escape(split['note'])}.</p>",
        "<h2>Machine</h2>",
        _table(["", "value"], [[k, str(v)] for k, v in report.machine.items()]),
        "<h2>Recipe</h2>",
        f"<pre>{html.escape(yaml.safe_dump(report.recipe, sort_keys=False))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
