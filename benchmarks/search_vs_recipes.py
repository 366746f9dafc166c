"""`presso compress --recipe auto` against every built-in recipe, measured in one run.

The built-in recipes each run once (`presso.compress`, the example's held-out rows, the same
budget); the automatic search runs as a user would run it, `presso compress --example NAME
--recipe auto --trials N` in a subprocess. Then the fp32 baseline, every result within budget
and the search's result are timed together in ONE interleaved benchmark (batch 1, `--rounds`
rounds: p50 of all calls and the median of each round), so no ranking depends on when a run
happened to be timed.

Issue 8's Done-when: the search's result is at least as good on latency AND size as the best
built-in recipe within the same budget. "Best" is read three ways, each printed:
- the built-in that the search's own pick rule (balanced: smallest sum of latency, size and
  drop, each scaled to [0, 1] over the built-ins) ranks first;
- the fastest built-in;
- the smallest built-in (runnable model.onnx).
"At least as good on latency" allows a tie within timing noise: the search's result counts
as slower only if its p50 is more than 2% above the built-in's AND the built-in is faster in
significantly many interleaved rounds (a sign test at the 5% level: 12 or more of 15). Two
copies of one model, timed like this, split the rounds about evenly (9 of 15 happens).

    python benchmarks/search_vs_recipes.py [--example digits] [--trials 20] [--sampler tpe]
                                           [--recipes ...] [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import presso
from presso.errors import PressoError
from presso.measure.bench import BenchSettings, time_latency
from presso.recipe.schema import builtin_names
from presso.search.front import ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="digits")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--recipes", nargs="+", default=None, help="default: every built-in recipe")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", default=None, help="keep the search folder here (default: a temporary folder)"
    )
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"{args.rounds} rounds\n"
    )
    example = presso.load_example(args.example)
    rows, results = {}, {}
    for recipe in args.recipes or builtin_names():
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
            rows[recipe] = {
                "refusal": str(exc).splitlines()[0][:120],
                "seconds": time.perf_counter() - started,
            }
            print(f"  {recipe}: refused in {rows[recipe]['seconds']:.0f} s", flush=True)
            continue
        r = result.report
        results[recipe] = result  # kept alive: its workdir holds the model file
        rows[recipe] = {
            "seconds": time.perf_counter() - started,
            "drop": r.budget.drop,
            "passed": r.budget.passed,
            "quality": r.budget.compressed,
            "size_bytes": r.compressed.size_bytes,
            "what": "; ".join(f"{s.technique}: {'skipped' if s.skipped else s.chosen}" for s in r.stages),
        }
        print(f"  {recipe}: ok in {rows[recipe]['seconds']:.0f} s", flush=True)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="presso-auto-")) / "auto"
    # The Done-when's command; another sampler goes through presso search (compress auto uses TPE).
    how = ["compress", "--recipe", "auto"] if args.sampler == "tpe" else ["search", "--sampler", args.sampler]
    command = [
        sys.executable,
        "-m",
        "presso",
        *how,
        "--example",
        args.example,
        "--trials",
        str(args.trials),
        "--out",
        str(out),
        "--quiet",
        "--threads",
        str(args.threads),
    ]
    print("  $ " + " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:])
        raise SystemExit(f"the search failed (exit {done.returncode})")
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    print(
        f"  auto: ok in {seconds:.0f} s ({len(search['trials'])} trials; picked trial {search['picked']}: "
        f"{report['recipe']['description']})\n"
    )
    rows["auto"] = {
        "seconds": seconds,
        "drop": report["budget"]["drop"],
        "passed": report["budget"]["passed"],
        "quality": report["budget"]["compressed"],
        "size_bytes": report["compressed"]["size_bytes"],
        "what": report["recipe"]["description"].split(": ", 1)[-1],
    }

    first = next(iter(results.values()))
    paths = {
        "fp32": first._workdir / "baseline.onnx",
        "auto": out / "model.onnx",
        **{k: res.model_path for k, res in results.items() if res.report.budget.passed},
    }
    from recipes_suite import example_rows  # this folder's suite: one held-out row in the model's inputs

    timing = time_latency(
        paths, example_rows(example, first), BenchSettings(rounds=args.rounds, threads=args.threads)
    )
    for name, t in timing.items():
        if name != "fp32":
            rows[name].update(p50_ms=t.p50_ms, rounds_ms=list(t.rounds_ms))
    print_table(args.example, first.report, rows, timing["fp32"].p50_ms)
    check(rows, timing)


def print_table(name: str, report, rows: dict, base_ms: float) -> None:
    metric = report.budget.primary_metric
    print(
        f"{name}: fp32 {metric} {report.budget.baseline:.4f}, {report.baseline.size_bytes / 1e3:.1f} kB, "
        f"p50 {base_ms:.4f} ms (budget: drop <= {report.budget.max_drop})\n"
    )
    print(f"| recipe | {metric} | drop | size kB | p50 ms | vs fp32 | run s | what |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for recipe in sorted(rows, key=lambda k: rows[k].get("p50_ms", float("inf"))):
        r = rows[recipe]
        if "refusal" in r:
            print(f"| {recipe} | - | - | - | - | - | {r['seconds']:.0f} | refused: {r['refusal'][:80]} |")
            continue
        p50 = r.get("p50_ms")
        print(
            f"| {'**auto**' if recipe == 'auto' else recipe} | {r['quality']:.4f} | {r['drop']:+.4f} | "
            f"{r['size_bytes'] / 1e3:.1f} | {'-' if p50 is None else f'{p50:.4f}'} | "
            f"{'-' if p50 is None else f'{base_ms / p50:.2f}x'} | {r['seconds']:.0f} | {r['what'][:90]} |"
        )
    print()


def check(rows: dict, timing: dict) -> None:
    auto = rows["auto"]
    builtins = {k: r for k, r in rows.items() if k != "auto" and r.get("passed") and "p50_ms" in r}
    if not builtins:
        print("PASS: no built-in recipe met the budget; the search's result did")
        return
    points = [
        {"name": k, "drop": r["drop"], "latency_ms": r["p50_ms"], "size_bytes": r["size_bytes"]}
        for k, r in builtins.items()
    ]
    best = {
        "balanced (the search's own pick rule)": ordered(points, "balanced")[0]["name"],
        "fastest": min(builtins, key=lambda k: builtins[k]["p50_ms"]),
        "smallest": min(builtins, key=lambda k: builtins[k]["size_bytes"]),
    }
    for how, name in best.items():
        other = builtins[name]
        wins = sum(o < a for o, a in zip(timing[name].rounds_ms, timing["auto"].rounds_ms, strict=True))
        n = len(timing["auto"].rounds_ms)
        latency_ok = auto["p50_ms"] <= other["p50_ms"] * 1.02 or wins < sign_test_rounds(n)
        size_ok = auto["size_bytes"] <= other["size_bytes"]
        ok = latency_ok and size_ok and auto["passed"]
        print(
            f"{'PASS' if ok else 'FAIL'} vs the best built-in, {how}: {name} — latency {auto['p50_ms']:.4f} vs "
            f"{other['p50_ms']:.4f} ms ({name} faster in {wins} of {n} rounds), size {auto['size_bytes']:,} vs "
            f"{other['size_bytes']:,} B, drop {auto['drop']:+.4f} vs {other['drop']:+.4f}"
        )


def sign_test_rounds(n: int, alpha: float = 0.05) -> int:
    """The fewest of ``n`` rounds one model must win for a one-sided sign test to say it is
    faster (each round a fair coin if the two are equally fast)."""
    from math import comb

    for k in range(n + 1):
        if sum(comb(n, j) for j in range(k, n + 1)) / 2**n <= alpha:
            return k
    return n + 1


if __name__ == "__main__":
    main()
