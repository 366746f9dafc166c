"""A latency-constrained search, and every front point re-measured afterwards.

Runs `presso search --example NAME --max-latency-ms LIMIT --keep-front ...` as a user would
(a subprocess), then — in this separate process, after the search has ended — loads the
fp32 baseline and every Pareto-front model the search kept (front/NNNN.onnx, and the
picked artifact's model.onnx) and times them together in ONE interleaved benchmark (batch
1, `--rounds` rounds). Issue 8's Done-when: every point of the front meets the latency
constraint when re-measured.

    python benchmarks/search_latency_front.py [--example minilm] [--max-latency-ms 16]
        [--techniques int8,lowrank] [--trials 6] [--sampler tpe] [--rounds 10] [--threads 2]
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
from presso.measure.bench import BenchSettings, time_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="minilm")
    parser.add_argument("--max-latency-ms", type=float, default=16.0)
    parser.add_argument("--techniques", default="int8,lowrank")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", default=None, help="keep the search folder here (default: a temporary folder)"
    )
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"{args.rounds} rounds\n"
    )
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="presso-front-")) / "search"
    command = [
        sys.executable,
        "-m",
        "presso",
        "search",
        "--example",
        args.example,
        "--max-latency-ms",
        str(args.max_latency_ms),
        "--techniques",
        args.techniques,
        "--trials",
        str(args.trials),
        "--sampler",
        args.sampler,
        "--keep-front",
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--quiet",
    ]
    print("$ presso " + " ".join(command[3:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        raise SystemExit(f"the search failed (exit {done.returncode})")
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    print(
        f"search: {time.perf_counter() - started:.0f} s, {len(search['trials'])} trials, picked trial "
        f"{search['picked']}\n"
    )
    print("| trial | state | recipe | drop | p50 ms (trial) | size MB | on front | note |")
    print("|---:|---|---|---:|---:|---:|---|---|")
    for t in search["trials"]:
        print(
            f"| {t['number']} | {t['state']} | {t['summary']} | {_f(t['drop'], '{:+.4f}')} | "
            f"{_f(t['latency_ms'], '{:.3f}')} | {_f(t['size_bytes'] and t['size_bytes'] / 1e6, '{:.1f}')} | "
            f"{'yes' if t['on_front'] else ''} | {(t['reason'] or '')[:80]} |"
        )
    print()

    front = [t for t in search["trials"] if t["on_front"]]
    paths = {}
    for t in front:
        kept = out / "front" / f"{t['number']:04d}.onnx"
        paths[f"trial {t['number']}"] = kept if kept.is_file() else None
    paths[f"trial {search['picked']}"] = out / "model.onnx"  # the artifact: re-run in full by the search
    missing = [k for k, p in paths.items() if p is None]
    paths = {k: p for k, p in paths.items() if p is not None}
    example = presso.load_example(args.example)
    from presso.data.resolve import resolve_data
    from presso.export.onnx_export import export_onnx
    from presso.model.sources import load_model

    loaded = load_model(example.model)
    data = resolve_data(example.data, loaded)
    baseline = out.parent / "fp32.onnx"
    export_onnx(loaded, data.head(2).inputs, baseline)
    timing = time_latency(
        {"fp32": baseline, **paths},
        data.head(1).inputs,
        BenchSettings(rounds=args.rounds, threads=args.threads),
    )
    print(
        f"Re-measured in this process, after the search, in one interleaved run (limit "
        f"{args.max_latency_ms:g} ms):\n"
    )
    print("| model | p50 ms | slowest round median ms | meets the limit |")
    print("|---|---:|---:|---|")
    ok = True
    for name, t in timing.items():
        meets = t.p50_ms <= args.max_latency_ms
        ok &= meets or name == "fp32"
        print(f"| {name} | {t.p50_ms:.3f} | {max(t.rounds_ms):.3f} | {'yes' if meets else 'NO'} |")
    print()
    if missing:
        print(f"(front points without a kept model here — run by another worker: {', '.join(missing)})")
    print(
        f"{'PASS' if ok and front else 'FAIL'}: {len(paths)} front point(s) re-measured, "
        f"{'every one' if ok else 'NOT every one'} within --max-latency-ms {args.max_latency_ms:g}"
    )


def _f(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


if __name__ == "__main__":
    main()
