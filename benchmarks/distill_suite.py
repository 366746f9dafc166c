"""Knowledge distillation on the small examples: students against the same student trained on
labels alone (digits), and an MLP student of a scikit-learn gradient-boosting teacher (tabular).

Every row is one `presso.distill` run, measured like any compress result: the teacher and
the student in the same run, interleaved timing rounds, quality on the same held-out rows.

digits: the teacher is the example CNN (trained on the example's 1,078 training rows). The
student keeps `--width` of every layer's channels / neurons (at most a quarter of the
parameters) and learns from the training rows plus the calibration part of the held-out
rows, either from the labels alone (alpha 0, no mixup: plain supervised training) or from
the teacher (soft targets T=4, alpha 0.9, plus mixup rows the teacher labels). Both start
from the same initialisation (`--init random`: from scratch, the classic setting; `teacher`:
the teacher's strongest channels).

tabular: the teacher is scikit-learn's GradientBoostingClassifier fitted on the example's
training rows; presso sees only its `predict_proba`. The student is a 30-64-64-2 MLP
distilled from it, exported to ONNX, timed against the teacher's own predict_proba at batch 1.

    python benchmarks/distill_suite.py [--seeds 0 1 2] [--init random teacher] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from pruning_suite import figures, start

import presso

KD = {"alpha": 0.9, "temperature": 4.0, "augment": 2}
LABELS_ONLY = {"alpha": 0.0, "augment": 0}


def digits_training_rows(folder: Path) -> Path:
    """The rows the teacher was trained on, with labels, as an .npz the student also trains on."""
    from presso.examples.digits import _split

    X_tr, _, y_tr, _ = _split()
    path = folder / "digits-train.npz"
    np.savez(path, X=X_tr, y=y_tr)
    return path


def run_digits(args, bench, tmp: Path) -> dict:
    ex = presso.load_example("digits")
    train = digits_training_rows(tmp)
    out: dict = {}
    print("\n### digits: student vs the same student on labels alone\n")
    print(
        "| init | seed | training | teacher acc | student acc | student params (of teacher) | p50 teacher -> student |"
    )
    print("|---|---:|---|---:|---:|---|---|")
    for init in args.init:
        for seed in args.seeds:
            for label, opts in (("labels only", LABELS_ONLY), ("distilled", KD)):
                result = presso.distill(
                    ex.model,
                    ex.data,
                    width=args.width,
                    init=init,
                    epochs=args.epochs,
                    patience=15,
                    train_data=str(train),
                    seed=seed,
                    max_drop=1.0,
                    bench=bench,
                    **opts,
                )
                f = figures(result.report)
                out[f"{init}/{seed}/{label}"] = f
                print(
                    f"| {init} | {seed} | {label} | {f['baseline']:.4f} | {f['compressed']:.4f} | "
                    f"{f['parameters'][1]:,} ({f['parameters'][1] / f['parameters'][0]:.1%}) | "
                    f"{f['p50_ms'][0]:.3f} -> {f['p50_ms'][1]:.3f} ms |",
                    flush=True,
                )
                del result
    for init in args.init:
        kd = np.mean([out[f"{init}/{s}/distilled"]["compressed"] for s in args.seeds])
        lab = np.mean([out[f"{init}/{s}/labels only"]["compressed"] for s in args.seeds])
        teacher = np.mean([out[f"{init}/{s}/distilled"]["baseline"] for s in args.seeds])
        params = max(
            out[f"{init}/{s}/distilled"]["parameters"][1] / out[f"{init}/{s}/distilled"]["parameters"][0]
            for s in args.seeds
        )
        print(
            f"\ninit {init}: mean accuracy over seeds {args.seeds}: teacher {teacher:.4f}, labels only {lab:.4f}, "
            f"distilled {kd:.4f}"
        )
        print(
            f"  {'PASS' if params <= 0.25 else 'FAIL'}: student has at most a quarter of the parameters "
            f"({params:.1%})"
        )
        print(f"  {'PASS' if kd >= lab else 'FAIL'}: distilled >= labels only ({kd:.4f} vs {lab:.4f})")
        print(
            f"  {'PASS' if teacher - kd <= 0.02 else 'FAIL'}: distilled within 2 points of the teacher "
            f"({teacher - kd:+.4f})"
        )
    return out


def gradient_boosting_teacher():
    from sklearn.ensemble import GradientBoostingClassifier

    from presso.examples.tabular import _split

    X_tr, X_ho, y_tr, y_ho, _ = _split()
    gbm = GradientBoostingClassifier(random_state=0).fit(X_tr, y_tr)
    return gbm, X_tr, y_tr, X_ho, y_ho


def run_tabular(args, bench, tmp: Path) -> dict:
    gbm, X_tr, y_tr, X_ho, y_ho = gradient_boosting_teacher()
    train = tmp / "tabular-train.npz"
    np.savez(train, X=X_tr)  # no labels: the teacher labels them
    out: dict = {}
    print("\n### tabular: MLP student of scikit-learn's GradientBoostingClassifier (predict_proba)\n")
    print(
        "| seed | teacher acc | student acc | drop | teacher predict_proba p50 | student ORT p50 | speed-up | "
        "size teacher -> student |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for seed in args.seeds:
        result = presso.distill(
            gbm.predict_proba,
            (X_ho, y_ho),
            student="mlp",
            task="classification",
            train_data=str(train),
            seed=seed,
            bench=bench,
            max_drop=1.0,
            **KD,
        )
        f = figures(result.report)
        out[str(seed)] = f
        print(
            f"| {seed} | {f['baseline']:.4f} | {f['compressed']:.4f} | {f['drop']:+.4f} | {f['p50_ms'][0]:.3f} ms | "
            f"{f['p50_ms'][1]:.3f} ms | {f['latency_speedup']:.2f}x | "
            f"{f['size_bytes'][0] / 1e3:.1f} kB -> {f['size_bytes'][1] / 1e3:.1f} kB |",
            flush=True,
        )
        del result
    for seed, f in out.items():
        print(
            f"  seed {seed}: {'PASS' if f['drop'] <= 0.01 else 'FAIL'}: within 1 point of the teacher "
            f"({f['drop']:+.4f}); {'PASS' if f['latency_speedup'] > 1 else 'FAIL'}: faster than predict_proba "
            f"at batch 1 ({f['latency_speedup']:.2f}x)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["digits", "tabular"], choices=["digits", "tabular"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--init", nargs="+", default=["random"], choices=["random", "teacher"])
    parser.add_argument("--width", type=float, default=0.45)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="rows per call for the throughput ratio")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="save the raw figures here")
    args = parser.parse_args()
    bench, info = start(args)
    saved: dict = {"machine": info, "settings": {**vars(args), "json": str(args.json)}}
    with tempfile.TemporaryDirectory() as tmp:
        if "digits" in args.examples:
            saved["digits"] = run_digits(args, bench, Path(tmp))
        if "tabular" in args.examples:
            saved["tabular"] = run_tabular(args, bench, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
