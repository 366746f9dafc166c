"""The summary table printed at the end of ``presso compress``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from presso.report.schema import Report
from presso.report.table import comparison_rows


def print_summary(report: Report, console: Console, out_dir: str | None = None) -> None:
    table = Table(title=f"{report.model['name']} · {report.task} · recipe {report.recipe['name']}")
    table.add_column("")
    table.add_column(report.baseline.runtime, justify="right")
    table.add_column(report.compressed.runtime, justify="right")
    table.add_column("compressed vs baseline", justify="right")
    for row in comparison_rows(report):
        table.add_row(*row)
    console.print(table)
    b = report.budget
    style = "green" if b.passed else "red"
    console.print(
        f"[{style}]{b.primary_metric}: {b.baseline:.4f} -> {b.compressed:.4f} "
        f"(drop {b.drop:.4f}, budget {b.max_drop:g}) {'PASS' if b.passed else 'FAIL'}[/{style}]"
    )
    for note in report.notes:
        console.print(f"• {note}")
    for stage in report.stages:
        counts: dict[str, int] = {}
        for row in stage.layers:
            counts[row.get("precision", "?")] = counts.get(row.get("precision", "?"), 0) + 1
        if counts:
            listed = ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            console.print(f"• {stage.technique}: layers {listed} (per-layer table in report.html)")
    if out_dir:
        console.print(f"Artifact written to [bold]{out_dir}[/bold] (model.onnx, report.json, report.html, recipe.yaml)")
