"""Every built-in quantization recipe on the small examples: quality, size, speed vs fp32.

Each row is one `presso.compress` run; baseline and compressed model are measured in that
same run (interleaved rounds, medians), quality on the held-out rows. A recipe that cannot
meet the budget prints its refusal instead of a row.

    python benchmarks/quantization_suite.py [--examples digits tabular] [--recipes int8 int4 ...]
"""

from __future__ import annotations

import argparse

import presso
from presso.errors import BudgetError
from presso.examples import EXAMPLES
from presso.measure.bench import BenchSettings

RECIPES = ["int8", "int4", "kmeans", "qat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["digits"], choices=list(EXAMPLES))
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(
        "| example | recipe | chosen | metric | fp32 | compressed | drop | size (x smaller) | "
        "p50 fp32 -> compressed (speed-up) | layers |"
    )
    print("|---|---|---|---|---:|---:|---:|---|---|---|")
    for name in args.examples:
        ex = presso.load_example(name)
        for recipe in args.recipes:
            try:
                r = presso.compress(
                    ex.model, recipe, data=ex.data, task=ex.task, bench=BenchSettings(rounds=args.rounds)
                ).report
            except BudgetError as exc:
                print(f"| {name} | {recipe} | refused | | | | | | | {str(exc)[:120]} |", flush=True)
                continue
            b, c = r.baseline, r.compressed
            counts: dict[str, int] = {}
            for row in r.stages[-1].layers:
                counts[row.get("precision", "?")] = counts.get(row.get("precision", "?"), 0) + 1
            print(
                f"| {name} | {recipe} | {r.stages[-1].chosen} | {r.budget.primary_metric} | "
                f"{r.budget.baseline:.4f} | {r.budget.compressed:.4f} | {r.budget.drop:+.4f} | "
                f"{b.size_bytes / 1e3:.1f} kB -> {c.size_bytes / 1e3:.1f} kB ({r.ratios['size']:.2f}x) | "
                f"{b.latency_ms.p50:.3f} -> {c.latency_ms.p50:.3f} ms "
                f"({r.ratios['latency_speedup']:.2f}x) | "
                f"{', '.join(f'{n} {p}' for p, n in counts.items())} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
