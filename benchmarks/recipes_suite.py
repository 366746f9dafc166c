"""Every built-in recipe on an example, and which one is fastest within the budget.

Each recipe is one `presso.compress` run (quality on the held-out rows, against the same
budget). Then every result that met the budget, and the fp32 baseline, are timed together
in ONE interleaved benchmark (batch 1, `--rounds` rounds, p50 of all calls and the median
of each round), so the ranking does not depend on when each run happened to be timed. A
recipe that cannot meet the budget shows its refusal instead of a latency. The last lines
check issue 7's Done-when: `fast` is the fastest result within budget (a tie within the
timing noise — the other result not faster in most rounds — counts as fastest), and
`deep-compression` on digits stores its weights at least 20x smaller than fp32 within one
point of accuracy.

    python benchmarks/recipes_suite.py [--examples digits tabular minilm] [--recipes ...]
                                       [--rounds 15] [--threads 2] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

import presso
from presso.errors import PressoError
from presso.measure.bench import BenchSettings, time_latency
from presso.recipe.schema import builtin_names

# On all-MiniLM-L6-v2 the recipes that fine-tune every weight for many epochs (sparse, 2:4,
# sparse-int8, qat, hashed) take hours on 2 cores and run on dense fp32 kernels (int8 for
# sparse-int8) at best; pass --recipes to run them anyway.
MINILM_RECIPES = ["int8", "int4", "kmeans", "slim", "lowrank", "student", "fast"]


def run_recipe(example, recipe: str, args):
    started = time.perf_counter()
    try:
        result = presso.compress(
            example.model,
            recipe,
            data=example.data,
            task=example.task,
            bench=BenchSettings(rounds=3, threads=args.threads),
        )
    except PressoError as exc:
        return None, str(exc).splitlines()[0][:160], time.perf_counter() - started
    return result, None, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["digits", "tabular", "minilm"])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        help="default: every built-in recipe (on minilm: " + ", ".join(MINILM_RECIPES) + ")",
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, {args.rounds} rounds\n")
    figures = {}
    for name in args.examples:
        figures[name] = example_table(name, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


def example_table(name: str, args) -> dict:
    example = presso.load_example(name)
    recipes = args.recipes or (MINILM_RECIPES if name == "minilm" else builtin_names())
    results, rows = {}, {}
    for recipe in recipes:
        result, refusal, seconds = run_recipe(example, recipe, args)
        print(f"  {name} {recipe}: {'refused' if result is None else 'ok'} in {seconds:.0f} s", flush=True)
        rows[recipe] = {"refusal": refusal, "seconds": round(seconds, 1)}
        if result is not None:
            results[recipe] = result  # kept alive: its workdir holds the model file
            r = result.report
            rows[recipe].update(
                quality=r.budget.compressed,
                drop=r.budget.drop,
                passed=r.budget.passed,
                size=r.compressed.size_bytes,
                stored=r.compressed.stored_bytes,
                chosen=[f"{s.technique}: {'skipped' if s.skipped else s.chosen}" for s in r.stages],
            )
    if not results:
        print(f"{name}: no recipe met the budget\n")
        return rows
    first = next(iter(results.values()))
    baseline = first._workdir / "baseline.onnx"
    paths = {
        "fp32": baseline,
        **{k: res.model_path for k, res in results.items() if res.report.budget.passed},
    }
    timing = time_latency(
        paths, example_rows(example, first), BenchSettings(rounds=args.rounds, threads=args.threads)
    )
    base_ms = timing["fp32"].p50_ms
    for recipe, t in timing.items():
        if recipe != "fp32":
            rows[recipe].update(p50_ms=t.p50_ms, rounds_ms=list(t.rounds_ms), speedup=base_ms / t.p50_ms)
    print_table(name, first.report, rows, base_ms)
    check_fast(name, rows, timing)
    if name == "digits" and "deep-compression" in results:
        check_deep(results["deep-compression"].report)
    print()
    return {"fp32_p50_ms": base_ms, "recipes": rows}


def example_rows(example, result) -> dict:
    """One held-out row in the model's inputs (the models are timed at batch 1)."""
    from presso.data.resolve import resolve_data
    from presso.model.sources import load_model

    data = resolve_data(example.data, load_model(example.model))
    return data.head(1).inputs


def print_table(name: str, report, rows: dict, base_ms: float) -> None:
    metric = report.budget.primary_metric
    print(
        f"{name}: fp32 {metric} {report.budget.baseline:.4f}, {report.baseline.size_bytes / 1e3:.1f} kB, "
        f"p50 {base_ms:.4f} ms (budget: drop <= {report.budget.max_drop})\n"
    )
    print(f"| recipe | {metric} | drop | within budget | size kB | packed kB | p50 ms | vs fp32 | stages |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    ranked = sorted(rows, key=lambda k: rows[k].get("p50_ms", float("inf")))
    for recipe in ranked:
        r = rows[recipe]
        if r["refusal"]:
            print(f"| {recipe} | - | - | refused | - | - | - | - | {r['refusal'][:90]} |")
            continue
        stored = "-" if r["stored"] is None else f"{r['stored'] / 1e3:.1f}"
        p50 = f"{r['p50_ms']:.4f}" if "p50_ms" in r else "-"
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        print(
            f"| {recipe} | {r['quality']:.4f} | {r['drop']:+.4f} | {'yes' if r['passed'] else 'no'} | "
            f"{r['size'] / 1e3:.1f} | {stored} | {p50} | {speed} | {'; '.join(r['chosen'])} |"
        )


def check_fast(name: str, rows: dict, timing: dict) -> None:
    if "fast" not in timing:
        print(f"FAIL {name}: fast did not produce a result within budget")
        return
    others = {k: t for k, t in timing.items() if k not in ("fp32", "fast")}
    if not others:
        print(f"PASS {name}: fast is the only result within budget")
        return
    best = min(others, key=lambda k: others[k].p50_ms)
    fast, other = timing["fast"], others[best]
    wins = sum(o < f for o, f in zip(other.rounds_ms, fast.rounds_ms, strict=True))
    tie = other.p50_ms < fast.p50_ms and wins <= len(fast.rounds_ms) // 2
    ok = fast.p50_ms <= other.p50_ms or tie
    print(
        f"{'PASS' if ok else 'FAIL'} {name}: fast p50 {fast.p50_ms:.4f} ms vs the fastest other recipe within "
        f"budget, {best}, {other.p50_ms:.4f} ms ({other.p50_ms / fast.p50_ms:.2f}x; {best} faster in {wins} of "
        f"{len(fast.rounds_ms)} rounds{', a tie within noise' if tie else ''})"
    )


def check_deep(report) -> None:
    stored = report.stored
    drop = report.budget.drop
    ok = stored is not None and stored.weights_ratio >= 20 and drop <= 0.01
    print(
        f"{'PASS' if ok else 'FAIL'} digits deep-compression: weights {stored.fp32_weights_bytes:,} B fp32 -> "
        f"{stored.weights_bytes:,} B packed ({stored.weights_ratio:.1f}x; whole file {report.baseline.size_bytes:,}"
        f" -> {stored.bytes:,} B, {report.baseline.size_bytes / stored.bytes:.1f}x), accuracy drop {drop:+.4f}"
        if stored
        else "FAIL digits deep-compression: no packed file"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
