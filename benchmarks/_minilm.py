"""What the MiniLM comparison scripts share: the held-out split, the fp32 export, and one
table of fidelity (batch 1, against the PyTorch fp32 original) and interleaved latency."""

from __future__ import annotations

import tempfile
from pathlib import Path

import presso
from presso.data.dataset import split
from presso.export.onnx_export import export_onnx
from presso.measure.bench import BenchSettings, bench_onnx
from presso.measure.metrics import evaluate
from presso.measure.size import file_size, parameter_count
from presso.runtime.session import make_session, run_session

FP32 = "ONNX Runtime fp32"


def parse(parser):
    """Add the timing options, parse: (args, settings for the table, quick settings for compress)."""
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    return (
        args,
        BenchSettings(rounds=args.rounds, round_seconds=0.5, throughput_batch=16, threads=args.threads),
        BenchSettings(rounds=2, throughput_batch=8, threads=args.threads),
    )


def setup():
    """(example, held-out rows, PyTorch fp32 embeddings of them, exported fp32 path)."""
    ex = presso.load_example("minilm")
    parts = split(ex.data, 0.3, 0)  # the split compress makes with its defaults (seed 0)
    ev = parts.evaluation
    reference = ex.model.run_torch(ev.inputs)  # before any export
    work = Path(tempfile.mkdtemp(prefix="presso-bench-"))
    return ex, ev, reference, export_onnx(ex.model, parts.calibration.head(2).inputs, work / "fp32.onnx")


def compare(
    paths: dict[str, Path], ev, reference, settings: BenchSettings, title: str, int8_key: str
) -> dict:
    """Print one markdown table (fp32 first in ``paths``); returns the rows."""
    rows = {}
    for name, path in paths.items():
        out = run_session(make_session(path, threads=settings.threads), ev.inputs, batch_size=1)
        rows[name] = {
            "size": file_size(path),
            "params": parameter_count(path),
            "metrics": evaluate("embedding", out, reference),
        }
    timing = bench_onnx(paths, ev.head(1).inputs, ev.head(16).inputs, settings)
    base = timing[FP32]["latency_ms"]["p50"]
    int8_ms = timing[int8_key]["latency_ms"]["p50"]
    print(
        f"\nall-MiniLM-L6-v2, {len(ev)} held-out sentences, batch 1 x 128 tokens, {settings.thread_count} "
        f"threads, {settings.rounds} interleaved rounds; {title}\n"
    )
    print(
        "| runtime | parameters | size MB | p50 ms | vs ORT fp32 | vs presso int8 | mean cos | min cos | top-10 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        p50 = r["p50_ms"] = timing[name]["latency_ms"]["p50"]
        m = r["metrics"]
        print(
            f"| {name} | {r['params']:,} | {r['size'] / 1e6:.1f} | {p50:.2f} | {base / p50:.2f}x | "
            f"{int8_ms / p50:.2f}x | {m['mean_cosine']:.4f} | {m['min_cosine']:.4f} | "
            f"{m['top10_agreement']:.3f} |"
        )
    return rows
