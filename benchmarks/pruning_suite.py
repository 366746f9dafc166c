"""Every pruning recipe on the small examples: quality, parameters, zeros, size and speed vs fp32.

Each row is one `presso.compress` run of one recipe with one seed; baseline and compressed
model are measured in that same run (interleaved rounds, medians), quality on the held-out
rows. Latency is at batch 1, throughput at `--batch` rows. A recipe that cannot meet the
budget prints its refusal instead of a row. After each example's table, the Done-when checks
of issue 4 print as PASS/FAIL lines; a check holds only if it holds for every seed.

    python benchmarks/pruning_suite.py [--examples digits tabular] [--seeds 0 1 2] [--rounds 10]
                                       [--batch 256] [--threads 2] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import presso
from presso.errors import PressoError
from presso.measure.bench import BenchSettings
from presso.recipe.schema import Recipe, load_recipe
from presso.report.schema import Report

EXAMPLE_NAMES = ["digits", "tabular"]
RECIPES = ["sparse", "2:4", "slim", "sparse-int8", "slim-int8"]


def recipe_for(name: str) -> str | Recipe:
    """A built-in recipe name, or slim-int8: the built-in slim stage followed by the built-in int8 stage."""
    if name != "slim-int8":
        return name
    slim, int8 = load_recipe("slim"), load_recipe("int8")
    return Recipe(
        name="slim-int8",
        description="structured pruning (slim) then int8 quantization",
        stages=[*slim.stages, *int8.stages],
    )


def zero_fraction(report: Report) -> float | None:
    """Share of the prune stage's prunable weights that are zero (None without a prune stage).

    Layer rows give ``sparsity`` to 4 decimals: each layer's zeros are rounded back to a count,
    so 34,344 of 38,160 weights reads 90% rather than 89.9997%.
    """
    rows = [
        row
        for stage in report.stages
        if stage.technique == "prune"
        for row in stage.layers
        if "sparsity" in row and "parameters" in row
    ]
    total = sum(row["parameters"] for row in rows)
    return sum(round(row["sparsity"] * row["parameters"]) for row in rows) / total if total else None


def figures(report: Report) -> dict:
    b, c = report.baseline, report.compressed
    return {
        "metric": report.budget.primary_metric,
        "baseline": report.budget.baseline,
        "compressed": report.budget.compressed,
        "drop": report.budget.drop,
        "max_drop": report.budget.max_drop,
        "within_budget": report.budget.passed,
        "parameters": [b.parameters, c.parameters],
        "zero_fraction": zero_fraction(report),
        "size_bytes": [b.size_bytes, c.size_bytes],
        "size_ratio": report.ratios["size"],
        "p50_ms": [b.latency_ms.p50, c.latency_ms.p50],
        "latency_speedup": report.ratios["latency_speedup"],
        "throughput_per_s": [b.throughput_per_s, c.throughput_per_s],
        "throughput_batch": c.throughput_batch,
        "throughput_ratio": report.ratios["throughput"],
        "chosen": [f"{s.technique}: {s.chosen}" for s in report.stages],
    }


def table_row(recipe: str, seed: int, f: dict) -> str:
    zero = "-" if f["zero_fraction"] is None else f"{f['zero_fraction']:.1%}"
    return (
        f"| {recipe} | {seed} | {f['metric']} {f['baseline']:.4f} -> {f['compressed']:.4f} "
        f"({f['drop']:+.4f}) | {'yes' if f['within_budget'] else 'no'} | "
        f"{f['parameters'][0]:,} -> {f['parameters'][1]:,} | {zero} | "
        f"{f['size_bytes'][0] / 1e3:.1f} kB -> {f['size_bytes'][1] / 1e3:.1f} kB "
        f"({f['size_ratio']:.2f}x) | "
        f"{f['p50_ms'][0]:.3f} -> {f['p50_ms'][1]:.3f} ms ({f['latency_speedup']:.2f}x) | "
        f"{f['throughput_ratio']:.2f}x |"
    )


# Done-when checks of issue 4: (example, recipe, what, test on one run's figures and the
# figures of every recipe of that run's seed, shown value).
Check = tuple[str, str, str, Callable[[dict, dict], bool], Callable[[dict, dict], str]]
CHECKS: list[Check] = [
    (
        "digits",
        "sparse",
        ">= 90% of prunable weights zero",
        lambda f, _: (f["zero_fraction"] or 0) >= 0.90,
        lambda f, _: f"{f['zero_fraction'] or 0:.1%}",
    ),
    (
        "digits",
        "sparse",
        "accuracy drop <= 0.01",
        lambda f, _: f["drop"] <= 0.01,
        lambda f, _: f"{f['drop']:+.4f}",
    ),
    (
        "digits",
        "sparse",
        "file >= 5x smaller",
        lambda f, _: f["size_ratio"] >= 5,
        lambda f, _: f"{f['size_ratio']:.2f}x",
    ),
    (
        "digits",
        "sparse-int8",
        "file smaller than sparse's",
        lambda f, runs: "sparse" in runs and f["size_bytes"][1] < runs["sparse"]["size_bytes"][1],
        lambda f, runs: (
            f"{f['size_bytes'][1]:,} vs {runs['sparse']['size_bytes'][1]:,} bytes"
            if "sparse" in runs
            else "sparse not run"
        ),
    ),
    *[
        (name, "slim", what, test, shown)
        for name in ("digits", "tabular")
        for what, test, shown in (
            (
                "parameters at least halved",
                lambda f, _: 2 * f["parameters"][1] <= f["parameters"][0],
                lambda f, _: f"{f['parameters'][0]:,} -> {f['parameters'][1]:,}",
            ),
            (
                "within budget",
                lambda f, _: f["within_budget"],
                lambda f, _: f"drop {f['drop']:+.4f}, max {f['max_drop']}",
            ),
            (
                "throughput at the large batch >= 1.5x",
                lambda f, _: f["throughput_ratio"] >= 1.5,
                lambda f, _: f"{f['throughput_ratio']:.2f}x at batch {f['throughput_batch']}",
            ),
        )
    ],
]


def check_lines(example: str, runs: dict[int, dict[str, dict | str]], seeds: list[int]) -> list[str]:
    """One PASS/FAIL line per check of ``example``; ``runs[seed][recipe]`` is figures or a refusal."""
    lines = []
    for name, recipe, what, test, shown in (c for c in CHECKS if c[0] == example):
        passed, values = True, []
        for seed in seeds:
            f = runs[seed].get(recipe)
            if f is None:
                passed, value = False, "not run"
            elif isinstance(f, str):
                passed, value = False, "refused"
            else:
                done = {k: v for k, v in runs[seed].items() if isinstance(v, dict)}
                passed, value = passed and test(f, done), shown(f, done)
            values.append(f"seed {seed}: {value}")
        verdict = "SKIP" if all(recipe not in runs[seed] for seed in seeds) else "PASS" if passed else "FAIL"
        lines.append(f"{verdict} {name} {recipe}: {what} ({'; '.join(values)})")
    return lines


def machine(settings: BenchSettings) -> dict:
    import onnxruntime
    import torch

    from presso.runtime.cpu import cpu_features
    from presso.runtime.session import default_threads

    return {
        **cpu_features().describe(),
        "cores_visible": default_threads(),
        "threads": settings.thread_count,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def start(args) -> tuple[BenchSettings, dict]:
    """Bench settings from the common options (rounds, batch, threads, seeds), and the
    machine, printed above the tables."""
    bench = BenchSettings(rounds=args.rounds, throughput_batch=args.batch, threads=args.threads)
    info = machine(bench)
    flags = ", ".join(k for k in ("avx2", "avx512", "vnni") if info[k])
    print(
        f"machine: {info['cpu']} ({flags}), {info['cores_visible']} cores visible; ONNX Runtime "
        f"{info['onnxruntime']} with {info['threads']} threads, torch {info['torch']}, "
        f"python {info['python']}"
    )
    print(
        f"{args.rounds} interleaved rounds; latency at batch 1, throughput at batch {args.batch}; "
        f"seeds {' '.join(map(str, args.seeds))}",
        flush=True,
    )
    return bench, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=EXAMPLE_NAMES, choices=EXAMPLE_NAMES)
    parser.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="rows per call for the throughput ratio")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="save the raw figures and reports here")
    args = parser.parse_args()
    bench, info = start(args)

    saved: dict = {
        "machine": info,
        "settings": {**vars(args), "json": str(args.json)},
        "runs": [],
        "checks": {},
    }
    for name in args.examples:
        ex = presso.load_example(name)
        print(f"\n### {name}\n")
        print(
            "| recipe | seed | primary metric baseline -> compressed (drop) | within budget | parameters | "
            "prunable weights zero | size (x smaller) | p50 batch 1 (speed-up) | "
            f"throughput ratio @ batch {args.batch} |"
        )
        print("|---|---:|---|---|---|---:|---|---|---:|")
        runs: dict[int, dict[str, dict | str]] = {seed: {} for seed in args.seeds}
        for recipe in args.recipes:
            for seed in args.seeds:
                try:
                    report = presso.compress(
                        ex.model, recipe_for(recipe), data=ex.data, task=ex.task, seed=seed, bench=bench
                    ).report
                except PressoError as exc:
                    kind = "refused (budget)" if isinstance(exc, presso.BudgetError) else "error"
                    runs[seed][recipe] = f"{kind}: {exc}"
                    saved["runs"].append({"example": name, "recipe": recipe, "seed": seed, "error": str(exc)})
                    why = str(exc)[:160].replace("|", "/")  # a '|' would split the table cell
                    print(f"| {recipe} | {seed} | {kind}: {why} | no | | | | | |", flush=True)
                    continue
                f = runs[seed][recipe] = figures(report)
                saved["runs"].append(
                    {
                        "example": name,
                        "recipe": recipe,
                        "seed": seed,
                        "figures": f,
                        "report": report.model_dump(mode="json"),
                    }
                )
                print(table_row(recipe, seed, f), flush=True)
        lines = check_lines(name, runs, args.seeds)
        saved["checks"][name] = lines
        if lines:
            print(f"\nDone-when checks (issue 4), {name}:")
            print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))
        print(f"\nraw figures: {args.json}")


if __name__ == "__main__":
    main()
