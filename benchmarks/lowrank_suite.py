"""Low-rank factorization on the small examples and on a 1024-wide MLP: quality, parameters,
size and batch-1 speed against the fp32 original, measured in the same run.

Each row is one `presso.compress` run (baseline and result measured together: interleaved
rounds, medians; quality on held-out rows). `wide-mlp` is benchmarks/wide_mlp.py, a
64 -> 1024 -> 1024 -> 1024 -> 10 MLP trained on digits: its layers are wide enough for
thin factors to cut memory traffic at batch 1, which the 64-wide examples' are not. After
each model's table the Done-when checks of issue 5 print as PASS/FAIL lines (every seed).

    python benchmarks/lowrank_suite.py [--models digits tabular wide-mlp] [--recipes lowrank speed]
                                       [--seeds 0 1 2] [--rounds 10] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import wide_mlp
from pruning_suite import figures, start

import presso
from presso.errors import PressoError
from presso.recipe.schema import Recipe, Stage

MODELS = ["digits", "tabular", "wide-mlp"]
# lowrank: the built-in recipe (keep a quarter of each layer's parameters, milder if the
# budget breaks); speed: each layer at the largest rank measured faster than the dense layer.
RECIPES = {
    "lowrank": "lowrank",
    "speed": Recipe(name="lowrank-speed", stages=[Stage(technique="factorize", options={"rank": "speed"})]),
}

CHECKS = {
    "digits": [
        ("lowrank", "within budget", lambda f: f["within_budget"]),
        ("lowrank", "parameters reduced", lambda f: f["parameters"][1] < f["parameters"][0]),
    ],
    "tabular": [
        ("lowrank", "within budget", lambda f: f["within_budget"]),
        ("lowrank", "parameters reduced", lambda f: f["parameters"][1] < f["parameters"][0]),
    ],
    "wide-mlp": [
        ("lowrank", "within budget", lambda f: f["within_budget"]),
        ("lowrank", "parameters reduced", lambda f: f["parameters"][1] < f["parameters"][0]),
        ("lowrank", "batch-1 latency >= 1.3x lower", lambda f: f["latency_speedup"] >= 1.3),
    ],
}


def model_and_data(name: str, seed: int):
    if name == "wide-mlp":
        return wide_mlp.build(seed=seed), wide_mlp.digits_split()[1], "classification"
    ex = presso.load_example(name)
    return ex.model, ex.data, ex.task


def row(recipe: str, seed: int, f: dict, ranks: str) -> str:
    return (
        f"| {recipe} | {seed} | {f['metric']} {f['baseline']:.4f} -> {f['compressed']:.4f} ({f['drop']:+.4f}) | "
        f"{'yes' if f['within_budget'] else 'no'} | {f['parameters'][0]:,} -> {f['parameters'][1]:,} | "
        f"{f['size_bytes'][0] / 1e3:.1f} -> {f['size_bytes'][1] / 1e3:.1f} kB ({f['size_ratio']:.2f}x) | "
        f"{f['p50_ms'][0]:.3f} -> {f['p50_ms'][1]:.3f} ms ({f['latency_speedup']:.2f}x) | "
        f"{f['throughput_ratio']:.2f}x | {ranks} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="rows per call for the throughput ratio")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="save the raw figures here")
    args = parser.parse_args()
    bench, info = start(args)
    saved: dict = {
        "machine": info,
        "settings": {**vars(args), "json": str(args.json)},
        "runs": [],
        "checks": {},
    }
    for name in args.models:
        print(f"\n### {name}\n")
        print(
            "| recipe | seed | primary metric baseline -> compressed (drop) | within budget | parameters | "
            f"size | p50 batch 1 (speed-up) | throughput ratio @ {args.batch} | ranks |"
        )
        print("|---|---:|---|---|---|---|---|---:|---|")
        runs: dict[tuple[str, int], dict | str] = {}
        for seed in args.seeds:
            model, data, task = model_and_data(name, seed)
            for recipe in args.recipes:
                try:
                    report = presso.compress(
                        model, RECIPES[recipe], data=data, task=task, seed=seed, bench=bench
                    ).report
                except PressoError as exc:
                    runs[recipe, seed] = str(exc)
                    print(
                        f"| {recipe} | {seed} | {str(exc)[:200].replace('|', '/')} | no | | | | | |",
                        flush=True,
                    )
                    continue
                f = runs[recipe, seed] = figures(report)
                ranks = ", ".join(
                    f"{r['layer']} {r['rank']}"
                    for s in report.stages
                    for r in s.layers
                    if r.get("factorized")
                )
                saved["runs"].append(
                    {"model": name, "recipe": recipe, "seed": seed, "figures": f, "ranks": ranks}
                )
                print(row(recipe, seed, f, ranks), flush=True)
        lines = []
        for recipe, what, test in CHECKS.get(name, []):
            if recipe not in args.recipes:
                continue
            results = [runs.get((recipe, s)) for s in args.seeds]
            ok = all(isinstance(f, dict) and test(f) for f in results)
            lines.append(f"{'PASS' if ok else 'FAIL'} {name} {recipe}: {what}")
        saved["checks"][name] = lines
        if lines:
            print(f"\nDone-when checks (issue 5), {name}:\n" + "\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))
        print(f"\nraw figures: {args.json}")


if __name__ == "__main__":
    main()
