"""all-MiniLM-L6-v2: low-rank feed-forward layers (truncated SVD, recovered against the
original as teacher on offline text) next to int8, at batch 1.

Every model is measured in this one run: fidelity on the same held-out sentences (batch 1,
cosine of mean-pooled embeddings to the PyTorch fp32 original, top-10 retrieval agreement;
fine-tuning only sees the calibration sentences) and latency at batch 1 x 128 tokens in
interleaved rounds (medians), threads pinned. ``--keep`` is the fraction of each
feed-forward layer's parameters kept (0.5: rank 153 of 384).

    python benchmarks/lowrank_minilm.py [--keep 0.5 0.75] [--epochs 4] [--rounds 15]
"""

from __future__ import annotations

import argparse

import numpy as np
from _minilm import FP32, compare, parse, setup

import presso
from presso.recipe.schema import Recipe, Stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        type=float,
        nargs="+",
        default=[0.5],
        help="fractions of each feed-forward layer's parameters kept (one run each)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="recovery epochs (default: the stage's, 4)")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="allowed mean-cosine drop for the low-rank runs (so that they are measured, not refused)",
    )
    parser.add_argument("--no-int8", action="store_true", help="skip the low-rank + int8 runs")
    args, settings, quick = parse(parser)

    ex, ev, reference, fp32 = setup()
    int8 = presso.compress(ex.model, "int8", data=ex.data, task="embedding", bench=quick)
    int8_key = f"presso int8 ({int8.report.stages[0].chosen})"
    paths = {FP32: fp32, int8_key: int8.model_path}
    notes, results = [], [int8]  # a result's files live as long as the result object
    for keep in args.keep:
        options = {"keep": keep, "backoff": 0, **({"epochs": args.epochs} if args.epochs is not None else {})}
        stage = Stage(technique="factorize", options=options)
        recipes = [("fp32", [stage])] + (
            [] if args.no_int8 else [("+ int8", [stage, Stage(technique="int8")])]
        )
        for label, stages in recipes:
            result = presso.compress(
                ex.model,
                Recipe(name="lowrank", stages=stages),
                data=ex.data,
                task="embedding",
                max_drop=args.max_drop,
                bench=quick,
            )
            results.append(result)
            rank = next(r["rank"] for r in result.report.stages[0].layers if r.get("factorized"))
            paths[f"presso lowrank FFN keep {keep:.0%} (rank {rank}) {label}"] = result.model_path
            notes += [n for n in result.report.notes if n.startswith("factorize:")][:1]
    compare(
        paths,
        ev,
        reference,
        settings,
        "low rank: the 12 feed-forward Linear layers as truncated SVD factors, "
        "fine-tuned to the original on the calibration sentences",
        int8_key,
    )
    for note in dict.fromkeys(notes):  # the fp32 and + int8 runs of one keep share theirs
        print(f"\n{note}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
