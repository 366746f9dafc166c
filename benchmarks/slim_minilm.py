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

import numpy as np
from _minilm import FP32, compare, parse, setup

import presso
from presso.recipe.schema import Recipe, Stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--heads", type=float, default=0.25, help="fraction of attention heads removed per layer"
    )
    parser.add_argument(
        "--ffn", type=float, default=0.5, help="fraction of feed-forward neurons removed per layer"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="recovery epochs (default: the slim stage's)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="recovery learning rate (default: the stage's)"
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.2,
        help="allowed mean-cosine drop for the slim runs (slim cannot keep 0.01 here)",
    )
    args, settings, quick = parse(parser)

    ex, ev, reference, fp32 = setup()
    model = ex.model
    options = {"heads": args.heads, "ffn": args.ffn, "backoff": 0}
    options.update({k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None})
    slim = Stage(technique="slim", options=options)
    int8 = presso.compress(model, "int8", data=ex.data, task="embedding", bench=quick)
    slim_fp32 = presso.compress(
        model,
        Recipe(name="slim", stages=[slim]),
        data=ex.data,
        task="embedding",
        max_drop=args.max_drop,
        bench=quick,
    )
    slim_int8 = presso.compress(
        model,
        Recipe(name="slim-int8", stages=[slim, Stage(technique="int8")]),
        data=ex.data,
        task="embedding",
        max_drop=args.max_drop,
        bench=quick,
    )
    int8_key = f"presso int8 ({int8.report.stages[0].chosen})"
    paths = {
        FP32: fp32,
        int8_key: int8.model_path,
        "presso slim fp32": slim_fp32.model_path,
        f"presso slim + int8 ({slim_int8.report.stages[1].chosen})": slim_int8.model_path,
    }
    compare(
        paths,
        ev,
        reference,
        settings,
        f"slim removes {args.heads:.0%} of the heads and {args.ffn:.0%} of the "
        "feed-forward neurons per layer",
        int8_key,
    )
    for note in slim_int8.report.notes:
        if note.startswith("slim:"):
            print(f"\n{note}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
