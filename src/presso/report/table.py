"""The baseline-vs-compressed rows shared by the terminal and HTML renderings."""

from __future__ import annotations

from presso.report.schema import Budget, Report
from presso.tasks import change


def _mb(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.3f} MB" if n < 1e7 else f"{n / 1e6:.1f} MB"


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def comparison_rows(report: Report) -> list[list[str]]:
    b, c = report.baseline, report.compressed
    rows = [
        [
            "size",
            _mb(b.size_bytes),
            _mb(c.size_bytes),
            f"{b.size_bytes / c.size_bytes:.2f}x smaller" if b.size_bytes and c.size_bytes else "",
        ],
        ["parameters", _count(b.parameters), _count(c.parameters), ""],
        *_speed_rows(report),
        ["peak memory", _mem(b.peak_memory_mb), _mem(c.peak_memory_mb), ""],
    ]
    for name in b.metrics:
        if name in c.metrics:
            label = f"{name} (budget)" if name == report.budget.primary_metric else name
            rows.append(
                [
                    label,
                    f"{b.metrics[name]:.4f}",
                    f"{c.metrics[name]:.4f}",
                    metric_change(name, b.metrics[name], c.metrics[name]),
                ]
            )
    torch = report.reference.get("pytorch_fp32_latency_ms") or {}
    if torch.get("p50") is not None:
        fixed = torch.get("fixed_length") or {}
        rows.append(
            [
                f"PyTorch fp32 eager p50 (reference{', real length' if torch.get('basis') == 'real length' else ''})",
                f"{torch['p50']:.3f} ms",
                "",
                f"{fixed['p50']:.3f} ms padded to {fixed['tokens']} tokens" if fixed else "",
            ]
        )
    return rows


def latency_basis(report: Report) -> str:
    """What the headline latency ran on: 'batch 1', or for text 'batch 1, real length,
    median 21 tokens' (the held-out texts as long as they are)."""
    lat = report.compressed.latency_ms
    if lat.basis == "real length" and lat.tokens is not None:
        return f"batch 1, real length, median {lat.tokens:g} tokens"
    if lat.basis == "fixed length" and lat.tokens is not None:
        return f"batch 1, padded to {lat.tokens:g} tokens"
    return "batch 1"


def _speed_rows(report: Report) -> list[list[str]]:
    """Latency and throughput; a text model's at its texts' real length, then padded."""
    b, c = report.baseline, report.compressed
    real = c.latency_ms.basis == "real length"
    rows = [
        [
            f"latency p50 ({latency_basis(report)})",
            f"{b.latency_ms.p50:.3f} ms",
            f"{c.latency_ms.p50:.3f} ms",
            f"{b.latency_ms.p50 / c.latency_ms.p50:.2f}x faster",
        ],
        [
            f"latency p95 ({'batch 1, real length' if real else latency_basis(report)})",
            f"{b.latency_ms.p95:.3f} ms",
            f"{c.latency_ms.p95:.3f} ms",
            "",
        ],
    ]
    bf, cf = b.fixed_length, c.fixed_length
    if bf is not None and cf is not None:
        rows.append(
            [
                f"latency p50 (batch 1, padded to {cf.tokens} tokens)",
                f"{bf.latency_ms.p50:.3f} ms",
                f"{cf.latency_ms.p50:.3f} ms",
                f"{bf.latency_ms.p50 / cf.latency_ms.p50:.2f}x faster",
            ]
        )
    rows.append(
        [
            f"throughput (batch {b.throughput_batch}{', real length, length-sorted' if real else ''})",
            f"{b.throughput_per_s:,.0f}/s",
            f"{c.throughput_per_s:,.0f}/s",
            f"{c.throughput_per_s / b.throughput_per_s:.2f}x",
        ]
    )
    if bf is not None and cf is not None:
        rows.append(
            [
                f"throughput (batch {bf.throughput_batch}, padded to {cf.tokens} tokens)",
                f"{bf.throughput_per_s:,.0f}/s",
                f"{cf.throughput_per_s:,.0f}/s",
                f"{cf.throughput_per_s / bf.throughput_per_s:.2f}x",
            ]
        )
    return rows


def metric_change(metric: str, baseline: float, compressed: float) -> str:
    """'+0.0012 (+1.3%)': a metric's change in absolute and relative terms."""
    delta, relative = change(metric, baseline, compressed)
    return f"{delta:+.4f}" if relative is None else f"{delta:+.4f} ({relative:+.1%})"


def budget_line(b: Budget) -> str:
    """'mae: 0.1234 -> 0.1250 (relative increase +1.30%, budget 1.00%)': the verdict's figures."""
    if b.kind == "relative":
        what = "relative " + ("drop" if b.higher_is_better else "increase")
        return f"{b.primary_metric}: {b.baseline:.4f} -> {b.compressed:.4f} ({what} {b.drop:+.2%}, budget {b.max_drop:.2%})"
    what = "drop" if b.higher_is_better else "increase"
    return f"{b.primary_metric}: {b.baseline:.4f} -> {b.compressed:.4f} ({what} {b.drop:.4f}, budget {b.max_drop:g})"


def _mem(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:.1f} MB"


def memory_line(report: Report) -> str:
    """The compress run's own peak memory, against the fp32 model's size."""
    m = report.run_memory
    assert m is not None  # callers check
    line = f"this run's peak memory: {m.peak_rss_mb:,.0f} MiB RSS"
    if m.fp32_model_mb and m.fp32_model_mb >= _RATIO_FROM_MB:
        line += f" ({m.peak_rss_mb / m.fp32_model_mb:.1f}x the fp32 model's {m.fp32_model_mb:,.1f} MiB)"
    elif m.fp32_model_mb:
        # the interpreter, torch and ONNX Runtime alone take ~500 MiB: a ratio to a small
        # model's file would only measure them
        line += (
            f" (the fp32 model is {m.fp32_model_mb:,.1f} MiB; most of it is Python, torch and ONNX Runtime)"
        )
    return line


_RATIO_FROM_MB = 50.0
