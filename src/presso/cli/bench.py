"""``presso bench``: latency, throughput, size and memory of models, measured side by side."""

from __future__ import annotations

import json
from pathlib import Path

from presso.cli.common import add_bench_options, add_common, bench_settings, console, print_json

HELP = "measure latency, throughput, size and peak memory of an artifact or .onnx (optionally vs another)"


def register(sub) -> None:
    p = sub.add_parser("bench", help=HELP, description=HELP + ". Models given together are timed "
                       "in interleaved rounds in one process, so their ratios are fair. Inputs are "
                       "synthetic rows shaped like the model's inputs.")
    p.add_argument("model", help="artifact folder or .onnx file")
    p.add_argument("--vs", metavar="OTHER", action="append", default=[],
                   help="another artifact folder or .onnx to compare with (repeatable)")
    p.add_argument("--seq-len", type=int, default=128, help="length of free non-batch axes, e.g. tokens (default 128)")
    add_bench_options(p)
    add_common(p)
    p.set_defaults(run=run)


def _model_file(spec: str) -> Path:
    from presso.errors import PressoError
    from presso.model.onnx_file import load_onnx

    path = Path(spec)
    if path.is_dir():
        path = path / "model.onnx"
        if not path.is_file():
            raise PressoError(f"'{spec}' is not a presso artifact folder (no model.onnx).")
    elif path.suffix != ".onnx":
        raise PressoError(f"'{spec}' is neither an artifact folder nor an .onnx file.")
    load_onnx(path)  # clear error for missing/corrupt files
    return path


def run(args) -> int:
    from rich.table import Table

    from presso.measure.bench import bench_onnx
    from presso.measure.memory import peak_memory_mb
    from presso.measure.size import file_size, parameter_count
    from presso.measure.synthetic import synthetic_inputs
    from presso.runtime.session import make_session

    settings = bench_settings(args)
    specs = [args.model, *args.vs]
    paths = {}
    for spec in specs:
        key = spec if spec not in paths else f"{spec} ({len(paths)})"
        paths[key] = _model_file(spec)
    first = make_session(next(iter(paths.values())))
    batch1 = synthetic_inputs(first, 1, args.seq_len)
    batch_n = synthetic_inputs(first, settings.throughput_batch, args.seq_len)
    timing = bench_onnx(paths, batch1, batch_n, settings)
    results = {}
    for key, path in paths.items():
        results[key] = {"path": str(path), "size_bytes": file_size(path),
                        "parameters": parameter_count(path), **timing[key],
                        "peak_memory_mb": peak_memory_mb(path, batch_n, settings.thread_count)}
    if args.json:
        print_json(json.dumps({"threads": settings.thread_count, "models": results}, indent=2))
    base = results[next(iter(results))]
    table = Table(title=f"presso bench · {settings.thread_count} threads · interleaved rounds")
    for col in ("model", "size", "params", "p50 ms", "p95 ms", f"throughput/s (batch {settings.throughput_batch})",
                "peak MB", "speed vs first"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for key, r in results.items():
        table.add_row(key, f"{r['size_bytes'] / 1e6:.3f} MB", f"{r['parameters']:,}",
                      f"{r['latency_ms']['p50']:.3f}", f"{r['latency_ms']['p95']:.3f}",
                      f"{r['throughput_per_s']:,.0f}",
                      "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}",
                      f"{base['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x")
    console(args).print(table)
    return 0
