"""all-MiniLM-L6-v2: structured pruning (slim: heads + feed-forward neurons, recovered
against the original as teacher on offline text) vs unpruned int8, at batch 1.

Every model is measured in this one run: fidelity on the same held-out sentences (batch 1,
cosine of mean-pooled embeddings to the PyTorch fp32 original, top-10 retrieval agreement;
the fine-tuning only sees the calibration sentences) and latency at batch 1 x 128 tokens in
interleaved rounds (medians), threads pinned.

    python benchmarks/slim_minilm.py [--heads 0.25] [--ffn 0.5] [--epochs 3] [--rounds 15]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import presso
from presso.data.dataset import split
from presso.export.onnx_export import export_onnx
from presso.measure.bench import BenchSettings, bench_onnx
from presso.measure.metrics import evaluate
from presso.measure.size import file_size, parameter_count
from presso.recipe.schema import Recipe, Stage
from presso.runtime.session import make_session, run_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=float, default=0.25, help="fraction of attention heads removed per layer")
    parser.add_argument("--ffn", type=float, default=0.5, help="fraction of feed-forward neurons removed per layer")
    parser.add_argument("--epochs", type=int, default=None, help="recovery epochs (default: the slim stage's)")
    parser.add_argument("--lr", type=float, default=None, help="recovery learning rate (default: the stage's)")
    parser.add_argument("--max-drop", type=float, default=0.2,
                        help="allowed mean-cosine drop for the slim runs (slim cannot keep 0.01 here)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    settings = BenchSettings(rounds=args.rounds, round_seconds=0.5, throughput_batch=16, threads=args.threads)
    quick = BenchSettings(rounds=2, throughput_batch=8, threads=args.threads)

    ex = presso.load_example("minilm")
    model = ex.model
    parts = split(ex.data, 0.3, 0)  # the split compress makes with its defaults (seed 0)
    ev = parts.evaluation
    reference = model.run_torch(ev.inputs)  # before any export
    work = Path(tempfile.mkdtemp(prefix="presso-bench-"))
    fp32 = export_onnx(model, parts.calibration.head(2).inputs, work / "fp32.onnx")

    options = {"heads": args.heads, "ffn": args.ffn, "backoff": 0}
    options.update({k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None})
    slim = Stage(technique="slim", options=options)
    int8 = presso.compress(model, "int8", data=ex.data, task="embedding", bench=quick)
    slim_fp32 = presso.compress(model, Recipe(name="slim", stages=[slim]), data=ex.data, task="embedding",
                                max_drop=args.max_drop, bench=quick)
    slim_int8 = presso.compress(model, Recipe(name="slim-int8", stages=[slim, Stage(technique="int8")]),
                                data=ex.data, task="embedding", max_drop=args.max_drop, bench=quick)
    paths = {"ONNX Runtime fp32": fp32,
             f"presso int8 ({int8.report.stages[0].chosen})": int8.model_path,
             "presso slim fp32": slim_fp32.model_path,
             f"presso slim + int8 ({slim_int8.report.stages[1].chosen})": slim_int8.model_path}

    rows = {}
    for name, path in paths.items():
        out = run_session(make_session(path, threads=settings.threads), ev.inputs, batch_size=1)
        rows[name] = {"size": file_size(path), "params": parameter_count(path),
                      "metrics": evaluate("embedding", out, reference)}
    timing = bench_onnx(paths, ev.head(1).inputs, ev.head(16).inputs, settings)

    base = timing["ONNX Runtime fp32"]["latency_ms"]["p50"]
    int8_ms = timing[next(k for k in paths if k.startswith("presso int8"))]["latency_ms"]["p50"]
    print(f"\nall-MiniLM-L6-v2, {len(ev)} held-out sentences, batch 1 x 128 tokens, {settings.thread_count} "
          f"threads, {args.rounds} interleaved rounds; slim removes {args.heads:.0%} of the heads and "
          f"{args.ffn:.0%} of the feed-forward neurons per layer\n")
    print("| runtime | parameters | size MB | p50 ms | vs ORT fp32 | vs presso int8 | mean cos | min cos | top-10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        p50 = timing[name]["latency_ms"]["p50"]
        m = r["metrics"]
        print(f"| {name} | {r['params']:,} | {r['size'] / 1e6:.1f} | {p50:.2f} | {base / p50:.2f}x | "
              f"{int8_ms / p50:.2f}x | {m['mean_cosine']:.4f} | {m['min_cosine']:.4f} | "
              f"{m['top10_agreement']:.3f} |")
    for note in slim_int8.report.notes:
        if note.startswith("slim:"):
            print(f"\n{note}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
