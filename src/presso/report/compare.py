"""Several artifacts side by side: reading their report.json, one compare.html page, one table.

Each result is a point of quality (the primary metric on held-out rows) against batch-1 latency
and against size, so that the trade-offs of recipes show at a glance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from presso.errors import PressoError
from presso.report import svg
from presso.report.html import CSS
from presso.report.html_parts import esc, figure
from presso.report.schema import Report


@dataclass(frozen=True)
class Result:
    """One artifact: its folder's name and its report."""

    folder: str
    report: Report

    @property
    def label(self) -> str:
        return f"{self.folder} \u00b7 {self.report.recipe.get('name', '?')}"


def load_report(folder: str | Path) -> Report:
    """The validated report of an artifact folder, or a one-line :class:`PressoError` naming the fix."""
    from pydantic import ValidationError

    folder = Path(folder)
    path = folder / "report.json"
    if not folder.is_dir():
        raise PressoError(
            f"'{folder}' is not a folder. Give artifact folders written by presso compress --out DIR."
        )
    if not path.is_file():
        raise PressoError(
            f"'{folder}' is not a presso artifact folder: it has no report.json. "
            "Give a folder written by presso compress."
        )
    try:
        return Report.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        raise PressoError(f"Could not read {path}: {exc}.") from None
    except json.JSONDecodeError as exc:
        raise PressoError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
            "Run presso compress again to rewrite the artifact."
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        more = f"; {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        raise PressoError(
            f"{path} is not a presso report ({where}: {first['msg']}{more}). It may come from "
            "another presso version: run presso compress again to rewrite it."
        ) from None


def warnings(results: list[Result]) -> list[str]:
    """Why numbers of these results may not be comparable (different machines or metrics)."""
    out = []
    machines = [r.report.machine for r in results]
    differ = sorted(
        k
        for k in {k for m in machines for k in m}
        if len({json.dumps(m.get(k), sort_keys=True) for m in machines}) > 1
    )
    if differ:
        out.append(
            f"These results were measured on different machines ({', '.join(differ)} differ): "
            "their latencies are not comparable."
        )
    bases = list(dict.fromkeys(_latency_basis(r) for r in results))
    if len(bases) > 1:
        out.append(
            f"These results timed their texts differently ({', '.join(bases)}): "
            "their latencies are not comparable."
        )
    metrics = list(dict.fromkeys(r.report.budget.primary_metric for r in results))
    if len(metrics) > 1:
        out.append(
            f"These results use different primary metrics ({', '.join(metrics)}): "
            "their quality figures are not comparable."
        )
    return out


def _latency_basis(result: Result) -> str:
    """What a result's latency ran on: 'real length, median 21 tokens', 'padded to 128 tokens',
    or 'rows as stored' (not text, or a report written before text was timed at real length)."""
    lat = result.report.compressed.latency_ms
    if lat.basis == "real length":
        return f"real length, median {lat.tokens:g} tokens"
    if lat.basis == "fixed length":
        return f"padded to {lat.tokens:g} tokens"
    return "rows as stored"


def _same_baseline(results: list[Result]) -> bool:
    keys = {json.dumps([r.report.model, r.report.data], sort_keys=True, default=str) for r in results}
    return len(keys) == 1


def records(results: list[Result]) -> list[dict]:
    """One plain dict per result: what the table, the terminal and ``--json`` show."""
    out = []
    for r in results:
        rep, b = r.report, r.report.budget
        out.append(
            {
                "folder": r.folder,
                "recipe": rep.recipe.get("name"),
                "metric": b.primary_metric,
                "quality": b.compressed,
                "baseline_quality": b.baseline,
                "drop": b.drop,
                "max_drop": b.max_drop,
                "passed": b.passed,
                "size_bytes": rep.compressed.size_bytes,
                "stored_bytes": rep.compressed.stored_bytes,
                "latency_p50_ms": rep.compressed.latency_ms.p50,
                "speedup": rep.baseline.latency_ms.p50 / rep.compressed.latency_ms.p50
                if rep.compressed.latency_ms.p50 > 0
                else None,
            }
        )
    return out


def table(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) shared by the page and the terminal; the metric's name heads its column
    when every result has the same one."""
    recs = records(results)
    metrics = {r["metric"] for r in recs}
    shared = metrics.pop() if len(metrics) == 1 else None

    def kb(n):
        return "" if n is None else f"{n / 1e3:,.1f}"

    header = [
        "folder",
        "recipe",
        shared or "quality",
        "drop",
        "budget",
        "size kB",
        "stored kB",
        "p50 ms",
        "speed-up",
    ]
    rows = [
        [
            r["folder"],
            str(r["recipe"]),
            ("" if shared else f"{r['metric']} ") + f"{r['quality']:.4f}",
            f"{r['drop']:+.4f}",
            "PASS" if r["passed"] else "FAIL",
            kb(r["size_bytes"]),
            kb(r["stored_bytes"]),
            f"{r['latency_p50_ms']:.4g}",
            "" if r["speedup"] is None else f"{r['speedup']:.2f}x",
        ]
        for r in recs
    ]
    if all(r["stored_bytes"] is None for r in recs):  # no packed files: no empty column
        header.pop(6)
        rows = [row[:6] + row[7:] for row in rows]
    return header, rows


def _charts(results: list[Result]) -> list[str]:
    metric = " / ".join(dict.fromkeys(r.report.budget.primary_metric for r in results))
    if _same_baseline(results):
        shown = [(results[0].report, "baseline")]  # one model and one data set: one baseline
    else:
        shown = [(r.report, f"baseline \u00b7 {r.folder}") for r in results]
    base_points = [
        (rep.baseline.latency_ms.p50, rep.baseline.size_bytes, rep.budget.baseline, label)
        for rep, label in shown
    ]
    labels = [r.label for r in results]
    quality = [r.report.budget.compressed for r in results]
    base_q, base_labels = [p[2] for p in base_points], [p[3] for p in base_points]

    def wide(xs):
        xs = [x for x in xs if x]
        return bool(xs) and max(xs) / min(xs) > 20  # a log axis once the points span decades

    lat = [r.report.compressed.latency_ms.p50 for r in results]
    base_lat = [p[0] for p in base_points]
    speed = svg.scatter_chart(
        "compare-latency",
        f"{metric} vs latency",
        [
            svg.Series("baseline", base_q, x=base_lat, labels=base_labels),
            svg.Series("compressed", quality, x=lat, labels=labels),
        ],
        x_label="latency p50, batch 1",
        x_unit="ms",
        y_label=metric,
        log_x=wide(lat + base_lat),
        x_zero=True,
        width=800,
    )
    size = [r.report.compressed.size_bytes for r in results]
    stored = [r.report.compressed.stored_bytes for r in results]
    base_size = [p[1] for p in base_points]
    series = [
        svg.Series("baseline", base_q, x=base_size, labels=base_labels),
        svg.Series("runnable (model.onnx)", quality, x=size, labels=labels),
    ]
    if any(s is not None for s in stored):
        series.append(svg.Series("stored (packed)", quality, x=stored, labels=labels))
    sizes = svg.scatter_chart(
        "compare-size",
        f"{metric} vs size",
        series,
        x_label="size",
        x_unit="bytes",
        y_label=metric,
        log_x=wide(size + stored + base_size),
        x_zero=True,
        quiet=(2,),
        width=800,
    )
    where = "the shared baseline" if _same_baseline(results) else "each result's own baseline"
    return [
        figure(
            speed,
            f"Each result's {metric} on its held-out rows against its batch-1 p50 latency, "
            f"with {where}; up and to the left is better.",
        ),
        figure(
            sizes,
            f"Each result's {metric} against the bytes of its runnable model.onnx"
            + (" and of its packed storage file (diamond, same height)" if len(series) > 2 else "")
            + f", with {where}; up and to the left is better.",
        ),
    ]


_CSS = ".results td:nth-child(2),.results th:nth-child(2){text-align:left}"


def render_compare(results: list[Result]) -> str:
    """compare.html as one string: warnings, two scatter charts, the table."""
    header, rows = table(results)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = ""
    for row in rows:
        cells = [
            f"<td class='{c.lower()}'>{c}</td>" if k == 4 else f"<td>{esc(c)}</td>" for k, c in enumerate(row)
        ]
        body += "<tr>" + "".join(cells) + "</tr>"
    warn = "".join(f"<p class='warn'>{esc(w)}</p>" for w in warnings(results))
    parts = [
        f"<header><h1>presso compare: {len(results)} result{'s' * (len(results) != 1)}</h1>",
        f"<p class='sub'>{esc(', '.join(r.label for r in results))}</p></header>{warn}",
        "<section id='charts'><h2>Quality vs speed and size</h2>",
        "".join(_charts(results)) + "</section>",
        "<section id='table'><h2>Results</h2>",
        f"<div class='scroll'><table class='results'><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
        "</table></div>",
        "<p class='sub'>quality: the primary metric of each result on its held-out rows; drop: baseline "
        "minus compressed (at most the budget to pass); size: model.onnx, stored: the packed file; "
        "speed-up: baseline p50 / compressed p50, timed in the same run.</p></section>",
        "<footer>Written by presso compare as one self-contained file (no scripts, no network).</footer>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>presso compare</title><style>{CSS}{_CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main>"
        "</body></html>"
    )


def print_comparison(results: list[Result], console) -> None:
    """The same table in the terminal, PASS in green and FAIL in red, after any warning."""
    from rich import box
    from rich.table import Table

    from presso.report.terminal import shown

    for w in warnings(results):
        console.print(f"[yellow]warning: {shown(w)}[/yellow]")
    header, rows = table(results)
    # A light box and no padding (columns are still a space apart): nine columns fit 80 characters.
    out = Table(title=f"presso compare \u00b7 {len(results)} results", box=box.SIMPLE_HEAD, padding=(0, 0))
    for k, h in enumerate(header):
        out.add_column(
            shown(h),
            justify="left" if k < 2 else "right",
            overflow="fold",
            min_width=10 if k < 2 else None,
            no_wrap=k >= 2,
        )
    for row in rows:
        verdict = "[green]PASS[/green]" if row[4] == "PASS" else "[red]FAIL[/red]"
        out.add_row(*(verdict if k == 4 else shown(c) for k, c in enumerate(row)))
    console.print(out)
