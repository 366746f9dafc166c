"""``presso search``: find the Pareto front of quality, latency and size automatically."""

from __future__ import annotations

import argparse
from pathlib import Path

from presso.cli.common import (
    add_bench_options,
    add_common,
    add_data_options,
    add_model_options,
    add_run_options,
    add_train_texts_option,
    console,
    make_progress,
    model_and_data,
    print_json,
    run_settings,
)

HELP = "search the compression space (Optuna) for the best quality / latency / size trade-offs"


_EPILOG = """examples:
  presso search --example digits --trials 20
  presso search --example minilm --max-latency-ms 15 --techniques int8,lowrank --trials 8
  presso search model.py:build --weights model.pt --data rows.npz --pick latency --max-size-mb 1
  presso search MODEL --data D --storage postgresql://user:pw@db:5432/presso --study run1   (on each machine)

Each trial is a recipe assembled from the model's choices (structured pruning ratio or a
student's width / depth / block type, pruning sparsity, per-layer low-rank factors, int8 /
k-means weights, and the fine-tuning hyper-parameters), run on the held-out split and
measured: quality drop, batch-1 latency on ONNX Runtime here, file size. Trials that break
--max-drop end early (pruned). The feasible trials' Pareto front (and the points near it)
is re-timed together, and the front of those timings stands; the point chosen by --pick is
re-run and written to --out like presso compress writes it, with the front (table and
plot) in report.html and every trial's recipe in trials/.

Samplers: tpe (Bayesian, default), nsga2 (evolutionary), random, grid (coarse: main
choices only), rl (a policy-gradient controller over the choices).

The study lives in --out/study.db (SQLite) unless --storage names a database; workers on
many machines join one study with the same --storage and --study, and the same command
continues an interrupted study. --trials counts finished trials of the whole study."""


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help=HELP,
        description=HELP + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    add_model_options(p)
    add_data_options(p)
    add_search_budget(p)
    _add_study_options(p)
    _add_search_limits(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="search folder: artifact, study.db, trials/ (default: ./presso-NAME-search)",
    )
    add_run_options(p)
    add_train_texts_option(p)
    add_bench_options(p)
    add_common(p)
    p.set_defaults(run=run)


def _add_study_options(p: argparse.ArgumentParser) -> None:
    """Where the study lives, how its trials are chosen, and which front point is written."""
    p.add_argument(
        "--storage",
        metavar="URL",
        help="study database: sqlite:///FILE or "
        "postgresql://user:password@host:5432/db (default: sqlite in --out)",
    )
    p.add_argument(
        "--study",
        metavar="NAME",
        help="study name; workers with the same name join it (default: presso-MODEL)",
    )
    p.add_argument(
        "--sampler",
        default="tpe",
        choices=["tpe", "nsga2", "random", "grid", "rl"],
        help="how trials are chosen (default: tpe)",
    )
    p.add_argument(
        "--pick",
        default="balanced",
        choices=["quality", "latency", "size", "balanced"],
        help="which point of the front becomes the artifact (default: balanced)",
    )


def _add_search_limits(p: argparse.ArgumentParser) -> None:
    """The constraints on a point, the families searched, and how trials are timed and kept."""
    p.add_argument(
        "--max-latency-ms",
        type=float,
        metavar="MS",
        help="only points at most this fast at batch 1 on this machine (p50)",
    )
    p.add_argument(
        "--max-size-mb", type=float, metavar="MB", help="only points whose model.onnx is at most this"
    )
    p.add_argument(
        "--techniques",
        metavar="LIST",
        help="comma-separated families the search may use: slim, distill, prune, lowrank, int8, "
        "kmeans, int4 (default: all that apply to the model)",
    )
    p.add_argument(
        "--trial-rounds",
        type=int,
        default=5,
        metavar="N",
        help="interleaved timing rounds per trial (default 5; the front is re-timed with --rounds)",
    )
    p.add_argument(
        "--keep-front",
        action="store_true",
        help="also write the model of every Pareto-front point to OUT/front/NNNN.onnx",
    )


def search_defaults() -> dict:
    """The search-only options at their defaults, for presso compress --recipe auto: its parser
    does not offer them, and this keeps their defaults in one place (the options above)."""
    scratch = argparse.ArgumentParser(add_help=False)
    _add_study_options(scratch)
    _add_search_limits(scratch)
    return vars(scratch.parse_args([]))


def add_search_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="finished trials the study should hold (default 20; with only --timeout, no limit)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop starting trials after this many seconds (a running trial finishes)",
    )


def run(args, out_default: str = "search") -> int:
    from presso.search import search

    progress = make_progress(args)
    model, data, task, name = model_and_data(args, progress)
    out = Path(args.out or f"presso-{name}-{out_default}")
    techniques = None
    if args.techniques:
        techniques = [t.strip() for t in args.techniques.split(",") if t.strip()]
    where = args.storage or f"{out / 'study.db'}"
    args.interrupt_hint = (
        f"Finished trials are kept in the study ({where}): run the same command to continue it."
    )
    found = search(
        model,
        data,
        out=out,
        trials=args.trials if args.trials is not None else (None if args.timeout else 20),
        timeout=args.timeout,
        storage=args.storage,
        study=args.study,
        sampler=args.sampler,
        pick=args.pick,
        max_latency_ms=args.max_latency_ms,
        max_size_mb=args.max_size_mb,
        techniques=techniques,
        settings=run_settings(args, task, args.weights),
        trial_rounds=args.trial_rounds,
        keep_front=args.keep_front,
        progress=progress,
    )
    found.save(out)
    if args.json:
        print_json(found.result.report_json())
    from presso.report.terminal import print_front, print_summary

    con = console(args)
    print_front(found.result.report, con)
    print_summary(found.result.report, con, out_dir=str(out))
    return 0
