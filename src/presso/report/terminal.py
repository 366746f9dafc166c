"""The summary table printed at the end of ``presso compress``."""

from __future__ import annotations

from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table

from presso.errors import one_line
from presso.report.schema import Report
from presso.report.table import budget_line, comparison_rows, memory_line


def shown(text: object) -> str:
    """The user's text (model, recipe, file, layer and column names) for a rich console:
    line breaks and escape sequences shown escaped instead of acting on the terminal, and
    square brackets drawn instead of read as rich markup (``[/]`` would raise)."""
    return escape(one_line(str(text)))


def print_summary(report: Report, console: Console, out_dir: str | None = None) -> None:
    title = f"{report.model['name']} · {report.task} · recipe {report.recipe['name']}"
    table = Table(title=shown(title))
    table.add_column("")
    table.add_column(shown(report.baseline.runtime), justify="right")
    table.add_column(shown(report.compressed.runtime), justify="right")
    table.add_column("compressed vs baseline", justify="right")
    for row in comparison_rows(report):
        table.add_row(*map(shown, row))
    console.print(table)
    b = report.budget
    style = "green" if b.passed else "red"
    console.print(f"[{style}]{shown(budget_line(b))} {'PASS' if b.passed else 'FAIL'}[/{style}]")
    for note in report.notes:
        console.print(f"• {shown(note)}")
    if report.run_memory is not None:
        console.print(f"• {shown(memory_line(report))}")
    for stage in report.stages:
        summary = _layer_summary(stage.layers)
        if summary:
            console.print(f"• {shown(stage.technique)}: {shown(summary)} (per-layer table in report.html)")
    if out_dir:
        packed = ", model.packed" if report.stored is not None else ""
        console.print(
            f"Artifact written to [bold]{shown(out_dir)}[/bold] (model.onnx{packed}, report.json, "
            "report.html, recipe.yaml)"
        )


def _layer_summary(rows: list[dict]) -> str:
    """One line per stage: precision counts (quantization), zeros (pruning), storage or layer count."""
    if any("precision" in r for r in rows):
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.get("precision", "other")] = counts.get(row.get("precision", "other"), 0) + 1
        return "layers " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if any("zeros" in r for r in rows):
        zeros, total = sum(r.get("zeros", 0) for r in rows), sum(r.get("parameters", 0) for r in rows)
        return f"{len(rows)} layers, {zeros:,} of {total:,} weights zero"
    if any("method" in r for r in rows):  # factorization
        done = [r for r in rows if r.get("factorized")]
        ranks = ", ".join(f"{r['layer']} rank {r['rank']}" for r in done[:4])
        return f"{len(done)} of {len(rows)} layers factorized ({ranks}{', ...' if len(done) > 4 else ''})"
    if any("codec" in r for r in rows):  # packed storage
        raw, packed = sum(r.get("raw_bytes", 0) for r in rows), sum(r.get("packed_bytes", 0) for r in rows)
        return f"{len(rows)} tensors entropy-coded, {raw:,} -> {packed:,} bytes"
    if any("storage" in r for r in rows):
        sparse = sum(r["storage"] == "bitmask" for r in rows)
        return f"{sparse} of {len(rows)} weight tensors stored as bitmask + values"
    return f"{len(rows)} layer{'' if len(rows) == 1 else 's'} reshaped" if rows else ""


def print_front(report: Report, console: Console) -> None:
    """The search's Pareto front (and how many trials it came from)."""
    s = report.search
    if s is None:
        return
    metric = report.budget.primary_metric
    table = Table(title=shown(f"Pareto front · study {s.study} · {s.sampler} · pick {s.pick}"))
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("trial", "right"),
        ("recipe", "left"),
        (f"{metric} drop", "right"),
        ("p50 ms", "right"),
        ("re-timed ms", "right"),
        ("size kB", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    front = sorted((t for t in s.trials if t.on_front), key=lambda t: t.latency_ms or 0)
    for t in front:
        mark = " ←" if t.number == s.picked else ""
        table.add_row(
            f"{t.number}{mark}",
            shown(t.summary),
            f"{t.drop:+.4f}",
            f"{t.latency_ms:.4f}",
            "-" if t.retimed_ms is None else f"{t.retimed_ms:.4f}",
            "-" if t.size_bytes is None else f"{t.size_bytes / 1e3:,.1f}",
        )
    console.print(table)
    counts: dict[str, int] = {}
    for t in s.trials:
        key = t.state if t.state != "complete" or t.feasible else "outside the constraints"
        counts[key] = counts.get(key, 0) + 1
    console.print(
        f"{len(s.trials)} trials ({', '.join(f'{n} {k}' for k, n in counts.items())}) in "
        f"{s.seconds:,.0f} s; trial {s.picked} re-run and measured below. Every trial's recipe: "
        "trials/NNNN.yaml (presso compress --recipe FILE)."
    )
