"""The report's search section: the Pareto front of an automatic search as charts and tables."""

from __future__ import annotations

from collections.abc import Sequence

from presso.report import svg
from presso.report.html_parts import esc, figure, table
from presso.report.schema import Report, Search, SearchTrial


def search_section(report: Report) -> str:
    s = report.search
    if s is None:
        return ""
    metric = report.budget.primary_metric
    speed, sizes = _charts(s, metric)
    front_table, everything, space = _tables(s, metric)
    return (
        _intro(s)
        + figure(
            speed,
            f"Each finished trial's {metric} drop on the held-out rows against its batch-1 p50 "
            "latency; down and to the left is better. Labels mark the Pareto front.",
        )
        + figure(sizes, f"Each finished trial's {metric} drop against the bytes of its model.onnx.")
        + "<h3>Pareto front</h3>"
        + front_table
        + f"<details><summary>All {len(s.trials)} trials</summary>{everything}</details>"
        + f"<details><summary>Search space ({len(s.space)} choices)</summary>{space}</details>"
    )


def _charts(s: Search, metric: str) -> tuple[str, str]:
    """Every finished trial's drop against its latency, and against its size, in three groups:
    the front, the other feasible trials, and those outside the constraints."""
    done = [t for t in s.trials if t.state == "complete" and t.drop is not None]
    groups = [
        ("Pareto front", [t for t in done if t.on_front]),
        ("other trials within the constraints", [t for t in done if t.feasible and not t.on_front]),
        ("outside the constraints", [t for t in done if not t.feasible]),
    ]
    groups = [(name, rows) for name, rows in groups if rows]

    def series(x_of) -> list[svg.Series]:
        return [
            svg.Series(
                name,
                [t.drop for t in rows],
                x=[x_of(t) for t in rows],
                labels=[f"#{t.number}" + (" picked" if t.number == s.picked else "") for t in rows],
            )
            for name, rows in groups
        ]

    # A trial without a timing or a size has no point on that chart: it is no part of its x range.
    lat = [t.latency_ms for t in done if t.latency_ms is not None]
    size = [t.size_bytes for t in done if t.size_bytes is not None]
    quiet = tuple(range(1, len(groups)))  # only the front's points carry labels
    speed = svg.scatter_chart(
        "search-latency",
        f"{metric} drop vs latency, every finished trial",
        series(lambda t: t.latency_ms),
        x_label="latency p50, batch 1",
        x_unit="ms",
        y_label=f"{metric} drop",
        log_x=_wide(lat),
        quiet=quiet,
        width=800,
    )
    sizes = svg.scatter_chart(
        "search-size",
        f"{metric} drop vs size, every finished trial",
        series(lambda t: t.size_bytes),
        x_label="model.onnx",
        x_unit="bytes",
        y_label=f"{metric} drop",
        log_x=_wide(size),
        quiet=quiet,
        width=800,
    )
    return speed, sizes


def _wide(values: Sequence[float]) -> bool:
    """Whether positive values span more than a factor of 20: a log axis reads them better."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def _intro(s: Search) -> str:
    """The study in a paragraph: where it lives, its trials by state, objectives, constraints, and
    how the front was decided."""
    limits = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in s.constraints.items() if v is not None)
    counts: dict[str, int] = {}
    for t in s.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return (
        f"<p>Study <b>{esc(s.study)}</b> ({esc(s.storage)}), sampler {esc(s.sampler)}: "
        f"{len(s.trials)} trials ({esc(', '.join(f'{n} {k}' for k, n in counts.items()))}) in "
        f"{s.seconds:,.0f} s. Objectives: {esc(', '.join(s.objectives))}, all minimised; constraints: "
        f"{esc(limits)}. The front's point for <b>{esc(s.pick)}</b> is trial {s.picked}, re-run as a full "
        "compress run: the figures above are that run's. Trial latencies are quick timings with the "
        "baseline at the moment each trial ran; the front, and every point that those timings did not "
        "put clearly behind it, were re-timed together in one interleaved run, which decided the "
        "front.</p>"
    )


def _tables(s: Search, metric: str) -> tuple[str, str, str]:
    """The front (ordered by re-timed latency), every trial, and the search space, as tables."""
    front = sorted((t for t in s.trials if t.on_front), key=lambda t: t.retimed_ms or t.latency_ms or 0)
    front_table = table(
        ["trial", "recipe", f"{metric} drop", "p50 ms", "re-timed ms", "size kB", "recipe file"],
        [_row(t, s.picked) for t in front],
    )
    everything = table(
        ["trial", "state", "recipe", f"{metric} drop", "p50 ms", "size kB", "worker", "note"],
        [
            [
                str(t.number),
                t.state,
                t.summary,
                _f(t.drop, "{:+.4f}"),
                _f(t.latency_ms, "{:.4f}"),
                _f(None if t.size_bytes is None else t.size_bytes / 1e3, "{:,.1f}"),
                t.worker or "-",
                (t.reason or "")[:160],
            ]
            for t in s.trials
        ],
    )
    space = table(["choice", "values"], [[k, ", ".join(map(str, v))] for k, v in s.space.items()])
    return front_table, everything, space


def _row(t: SearchTrial, picked: int) -> list[str]:
    return [
        f"{t.number}{' (picked)' if t.number == picked else ''}",
        t.summary,
        _f(t.drop, "{:+.4f}"),
        _f(t.latency_ms, "{:.4f}"),
        _f(t.retimed_ms, "{:.4f}"),
        _f(None if t.size_bytes is None else t.size_bytes / 1e3, "{:,.1f}"),
        t.recipe_file or "-",
    ]


def _f(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)
