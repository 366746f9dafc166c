"""all-MiniLM-L6-v2: presso int8 vs ONNX Runtime fp32, ORT quantize_dynamic defaults, PyTorch.

Every model is measured in this one run: fidelity on the same held-out sentences (batch 1,
cosine of mean-pooled embeddings to the PyTorch fp32 original, top-10 retrieval agreement)
and latency at batch 1 x 128 tokens in interleaved rounds (medians), threads pinned.

    python benchmarks/int8_minilm.py [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import presso
from presso.data.dataset import split
from presso.export.onnx_export import export_onnx
from presso.measure.bench import BenchSettings, bench_onnx, bench_torch
from presso.measure.metrics import evaluate
from presso.measure.size import file_size
from presso.runtime.session import make_session, run_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    settings = BenchSettings(rounds=args.rounds, round_seconds=0.5, throughput_batch=16, threads=args.threads)

    ex = presso.load_example("minilm")
    model = ex.model
    parts = split(ex.data, 0.3, 0)
    ev = parts.evaluation
    reference = model.run_torch(ev.inputs)  # before any export
    work = Path(tempfile.mkdtemp(prefix="presso-bench-"))
    fp32 = export_onnx(model, parts.calibration.head(2).inputs, work / "fp32.onnx")

    from onnxruntime.quantization import quantize_dynamic

    ort_default = work / "ort_dynamic_default.onnx"
    quantize_dynamic(str(fp32), str(ort_default))  # ORT's defaults: s8 weights, per-tensor

    result = presso.compress(
        model,
        "int8",
        data=ex.data,
        task="embedding",
        bench=BenchSettings(rounds=2, throughput_batch=8, threads=args.threads),
    )
    paths = {
        "ONNX Runtime fp32": fp32,
        "ORT quantize_dynamic defaults": ort_default,
        f"presso int8 ({result.report.stages[0].chosen})": result.model_path,
    }

    rows = {}
    for name, path in paths.items():
        out = run_session(make_session(path, threads=settings.threads), ev.inputs, batch_size=1)
        rows[name] = {"size": file_size(path), "metrics": evaluate("embedding", out, reference)}
    batch1 = ev.head(1).inputs
    timing = bench_onnx(paths, batch1, ev.head(16).inputs, settings)
    torch_ms = bench_torch(model.module, model.input_names, batch1, settings)["p50"]

    base = timing["ONNX Runtime fp32"]["latency_ms"]["p50"]
    default = timing["ORT quantize_dynamic defaults"]["latency_ms"]["p50"]
    print(
        f"\nall-MiniLM-L6-v2, {len(ev)} held-out sentences, batch 1 x 128 tokens, "
        f"{settings.thread_count} threads, {args.rounds} interleaved rounds\n"
    )
    print(
        "| runtime | size MB | p50 ms | p95 ms | vs ORT fp32 | vs ORT defaults | mean cos | min cos | top-10 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| PyTorch fp32 eager | - | {torch_ms:.2f} | - | {base / torch_ms:.2f}x | - | 1 | 1 | 1 |")
    for name, r in rows.items():
        lat = timing[name]["latency_ms"]
        m = r["metrics"]
        print(
            f"| {name} | {r['size'] / 1e6:.1f} | {lat['p50']:.2f} | {lat['p95']:.2f} | "
            f"{base / lat['p50']:.2f}x | {default / lat['p50']:.2f}x | {m['mean_cosine']:.4f} | "
            f"{m['min_cosine']:.4f} | {m['top10_agreement']:.3f} |"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
