"""presso int8 on every built-in example: quality drop, size and speed vs ONNX Runtime fp32.

Each row is one `presso.compress` run; baseline and int8 are measured in that same run
(interleaved rounds, medians), quality on the held-out rows.

    python benchmarks/int8_examples.py [--examples digits tabular ...] [--rounds 10]
"""

from __future__ import annotations

import argparse

import presso
from presso.examples import EXAMPLES
from presso.measure.bench import BenchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(
        "| example | variant | primary metric | fp32 | int8 | drop | size fp32 -> int8 | "
        "p50 fp32 -> int8 (speed-up) | throughput ratio |"
    )
    print("|---|---|---|---:|---:|---:|---|---|---:|")
    for name in args.examples:
        ex = presso.load_example(name)
        r = presso.compress(
            ex.model, "int8", data=ex.data, task=ex.task, bench=BenchSettings(rounds=args.rounds)
        ).report
        b, c = r.baseline, r.compressed
        print(
            f"| {name} | {r.stages[0].chosen} | {r.budget.primary_metric} | {r.budget.baseline:.4f} | "
            f"{r.budget.compressed:.4f} | {r.budget.drop:+.4f} | {b.size_bytes / 1e3:.1f} kB -> "
            f"{c.size_bytes / 1e3:.1f} kB ({r.ratios['size']:.2f}x) | {b.latency_ms.p50:.3f} -> "
            f"{c.latency_ms.p50:.3f} ms ({r.ratios['latency_speedup']:.2f}x) | {r.ratios['throughput']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
