"""all-MiniLM-L6-v2: a shallower student (fewer transformer layers, initialised from the
teacher's) distilled on offline text, next to fp32 and int8, at batch 1.

Every model is measured in this one run: fidelity on the same held-out sentences (batch 1,
cosine of mean-pooled embeddings to the PyTorch fp32 original, top-10 retrieval agreement)
and latency at batch 1 x 128 tokens in interleaved rounds (medians), threads pinned.

The student learns (cosine loss to the teacher's embeddings) from the calibration sentences
plus every other prose sentence of the Python standard library's docstrings
(``--extra``, about 2,000; none of the example's 800, and presso drops any that repeat a
held-out row); the teacher labels them, no labels are needed.

    python benchmarks/distill_minilm.py [--depth 3] [--epochs 3] [--lr 2e-4] [--rounds 15]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _minilm import FP32, compare, parse, setup

import presso
from presso.examples.minilm import SENTENCES
from presso.examples.texts import all_stdlib_modules, stdlib_sentences
from presso.progress import Progress


def extra_sentences(limit: int | None) -> list[str]:
    """Stdlib docstring sentences that are not among the example's (neither calibration nor held-out)."""
    example = set(stdlib_sentences(SENTENCES))
    pool = [s for s in stdlib_sentences(100_000, seed=1, modules=all_stdlib_modules()) if s not in example]
    return pool[:limit] if limit else pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--depth", type=int, nargs="+", default=[3], help="transformer layers kept (one run each)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--extra", type=int, default=None, help="at most this many extra sentences (default all)"
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="allowed mean-cosine drop for the student runs (so that they are measured, not refused)",
    )
    parser.add_argument("--no-int8", action="store_true", help="skip the student + int8 runs")
    args, settings, quick = parse(parser)

    ex, ev, reference, fp32 = setup()
    texts = extra_sentences(args.extra)
    corpus = Path(tempfile.mkdtemp(prefix="presso-bench-")) / "extra.txt"
    corpus.write_text("\n".join(texts) + "\n")
    print(
        f"extra training text: {len(texts)} sentences from stdlib docstrings outside the example's {SENTENCES}"
    )
    int8 = presso.compress(ex.model, "int8", data=ex.data, task="embedding", bench=quick)
    int8_key = f"presso int8 ({int8.report.stages[0].chosen})"
    paths = {FP32: fp32, int8_key: int8.model_path}
    notes, results = [], [int8]  # a result's files live as long as the result object
    for depth in args.depth:
        for label, with_int8 in (("fp32", False), ("+ int8", True)):
            if with_int8 and args.no_int8:
                continue
            result = presso.distill(
                ex.model,
                ex.data,
                depth=depth,
                width=1.0,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                train_data=str(corpus),
                int8=with_int8,
                task="embedding",
                max_drop=args.max_drop,
                bench=quick,
                progress=_Log(),
            )
            results.append(result)
            paths[f"presso student {depth} of 6 layers {label}"] = result.model_path
            notes += [n for n in result.report.notes if n.startswith("distill:")][:1]
    compare(
        paths,
        ev,
        reference,
        settings,
        "students: the teacher's layers kept evenly spaced, distilled "
        "(cosine to the teacher) on the calibration sentences + the extra text",
        int8_key,
    )
    for note in dict.fromkeys(notes):
        print(f"\n{note}")


class _Log(Progress):
    """Epoch lines on stdout, so a long run shows where it is."""

    def log(self, message: str) -> None:
        if "epoch" in message or "labelling" in message:
            print(f"  {message}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
