"""``presso bench``: latency, throughput, size and memory of models, measured side by side."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from presso.cli.common import add_bench_options, add_common, bench_settings, console, print_json

HELP = "measure latency, throughput, size and peak memory of an artifact or .onnx (optionally vs another)"


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help=HELP,
        description=HELP + ". Models given together are timed "
        "in interleaved rounds in one process, so their ratios are fair. Inputs are "
        "synthetic rows shaped like the model's inputs.",
    )
    p.add_argument("model", help="artifact folder, .onnx file or .packed file")
    p.add_argument(
        "--vs",
        metavar="OTHER",
        action="append",
        default=[],
        help="another artifact folder, .onnx or .packed to compare with (repeatable)",
    )
    p.add_argument(
        "--seq-len", type=int, default=128, help="length of free non-batch axes, e.g. tokens (default 128)"
    )
    add_bench_options(p)
    add_common(p)
    p.set_defaults(run=run)


def _model_file(spec: str, scratch: Path) -> tuple[Path, Path]:
    """(the file whose size is reported, the .onnx that runs): a .packed file is stored as
    it is and run unpacked (its loader gives back the model it packed)."""
    from presso.errors import PressoError
    from presso.export.packed import unpack_to
    from presso.model.onnx_file import load_onnx

    path = Path(spec)
    if path.is_dir():
        path = path / "model.onnx"
        if not path.is_file():
            raise PressoError(f"'{spec}' is not a presso artifact folder (no model.onnx).")
    elif path.suffix == ".packed":
        if not path.is_file():
            raise PressoError(f"Packed file '{spec}' not found.")
        runnable = unpack_to(path, scratch / f"{len(list(scratch.iterdir()))}.onnx")
        return path, runnable
    elif path.suffix != ".onnx":
        raise PressoError(f"'{spec}' is neither an artifact folder, an .onnx file nor a .packed file.")
    load_onnx(path, scores=False)  # clear error for missing/corrupt files; any outputs may be timed
    return path, path


def run(args) -> int:
    settings = bench_settings(args)
    with tempfile.TemporaryDirectory(prefix="presso-bench-") as scratch:
        return _bench(args, settings, Path(scratch))


def _bench(args, settings, scratch: Path) -> int:
    from rich.table import Table

    from presso.measure.bench import bench_onnx
    from presso.measure.memory import peak_memory_mb
    from presso.measure.size import file_size, parameter_count
    from presso.measure.synthetic import synthetic_inputs
    from presso.report.terminal import shown
    from presso.runtime.session import make_session

    stored: dict[str, Path] = {}  # what was given: the packed file or the .onnx
    paths: dict[str, Path] = {}  # what runs: the .onnx (unpacked for a packed file)
    for spec in [args.model, *args.vs]:
        key = spec if spec not in paths else f"{spec} ({len(paths)})"
        stored[key], paths[key] = _model_file(spec, scratch)
    first = make_session(next(iter(paths.values())))
    batch1 = synthetic_inputs(first, 1, args.seq_len)
    batch_n = synthetic_inputs(first, settings.throughput_batch, args.seq_len)
    timing = bench_onnx(paths, batch1, batch_n, settings)
    results = {}
    for key, path in paths.items():
        size = stored[key].stat().st_size if stored[key] != path else file_size(path)
        results[key] = {
            "path": str(stored[key]),
            "size_bytes": size,
            "parameters": parameter_count(path),
            **timing[key],
            "peak_memory_mb": peak_memory_mb(path, batch_n, settings.thread_count),
        }
    if args.json:
        print_json(json.dumps({"threads": settings.thread_count, "models": results}, indent=2))
    base = results[next(iter(results))]
    table = Table(title=f"presso bench · {settings.thread_count} threads · interleaved rounds")
    for col in (
        "model",
        "size",
        "params",
        "p50 ms",
        "p95 ms",
        f"throughput/s (batch {settings.throughput_batch})",
        "peak MB",
        "speed vs first",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for key, r in results.items():
        table.add_row(
            shown(key),
            f"{r['size_bytes'] / 1e6:.3f} MB",
            f"{r['parameters']:,}",
            f"{r['latency_ms']['p50']:.3f}",
            f"{r['latency_ms']['p95']:.3f}",
            f"{r['throughput_per_s']:,.0f}",
            "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.1f}",
            f"{base['latency_ms']['p50'] / r['latency_ms']['p50']:.2f}x",
        )
    console(args).print(table)
    return 0
