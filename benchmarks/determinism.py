"""Is a run reproducible? Each built-in recipe runs twice on the digits example with the
same seed, on this machine, and the table says whether the two artifacts hold the same
model.onnx bytes, the same held-out metrics and the same choices (variants, kept stages).

    python benchmarks/determinism.py                      # every built-in recipe, twice
    python benchmarks/determinism.py --recipes int8,slim  # some of them

Each run is a fresh `presso compress` process (as a user would run it), one thread for
ONNX Runtime and PyTorch both, so that thread scheduling cannot change a sum's order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(recipe: str, out: Path) -> tuple[int, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "presso.cli.main", "compress", "--example", "digits"]
    command += ["--recipe", recipe, "--out", str(out), "--rounds", "2", "--batch", "16", "--threads", "1"]
    start = time.perf_counter()
    done = subprocess.run([*command, "--quiet"], capture_output=True, text=True, env=env)
    if done.returncode not in (0, 1):
        sys.stderr.write(done.stderr[-2000:])
    return done.returncode, time.perf_counter() - start


def _facts(out: Path) -> dict | None:
    if not (out / "report.json").is_file():
        return None
    report = json.loads((out / "report.json").read_text())
    return {
        "onnx": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
        "metrics": report["compressed"]["metrics"],
        "choices": [(s.get("technique"), s.get("chosen"), s.get("skipped")) for s in report["stages"]],
    }


def main() -> None:
    from presso.recipe.schema import builtin_names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(builtin_names()), help="comma-separated recipe names")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="presso-determinism-") as scratch:
        for recipe in args.recipes.split(","):
            runs = []
            for k in range(2):
                out = Path(scratch) / f"{recipe.replace(':', '-')}-{k}"
                code, seconds = _run(recipe, out)
                runs.append((code, seconds, _facts(out)))
            (code_a, sec_a, a), (code_b, _, b) = runs
            if a is None or b is None:
                rows.append((recipe, f"exit {code_a} / {code_b}", "", "", f"{sec_a:.0f}"))
                continue
            same = {k: "same" if a[k] == b[k] else "DIFFERENT" for k in ("onnx", "metrics", "choices")}
            rows.append((recipe, same["onnx"], same["metrics"], same["choices"], f"{sec_a:.0f}"))
            if same["choices"] != "same":
                print(f"  {recipe}: choices {a['choices']} vs {b['choices']}", flush=True)
            print(f"{recipe}: {same}", flush=True)
    print()
    print("| recipe | model.onnx bytes | held-out metrics | choices | seconds per run |")
    print("|---|---|---|---|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
