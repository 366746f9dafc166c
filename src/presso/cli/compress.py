"""``presso compress``: compress a model with a recipe and write the artifact folder."""

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
from presso.cli.search import add_search_budget, search_defaults
from presso.cli.search import run as search_run

HELP = "compress a model (or a built-in example) and write model.onnx with its evidence"


def register(sub) -> None:
    p = sub.add_parser(
        "compress",
        help=HELP,
        description=HELP + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  presso compress --example digits
  presso compress model.py:build --weights model.pt --data heldout.npz --out small/
  presso compress ./my-bert-folder --data sentences.txt --max-drop 0.005
  presso compress model.onnx --data rows.csv --target label --task classification
  presso compress --recipe small/recipe.yaml model.onnx --data rows.csv --target label

The budget --max-drop is an absolute drop of the task's primary metric on the held-out
rows: accuracy (classification), R^2 (regression, forecast), ROC-AUC (anomaly), mean
cosine to the original (embedding); without labels, agreement / R^2 with the original.
Default 0.01. If no variant meets it, presso writes nothing and exits with code 1.

Each finished stage is kept in OUT.checkpoint/ until the run completes; after an
interruption (Ctrl-C, a killed process) run the same command with --resume to continue
from the last finished stage.

--recipe auto searches the model's compression space (--trials N finished trials, default
20, or --timeout SECONDS) and writes the front's balanced point; presso search has the
samplers, constraints and shared studies.""",
    )
    add_model_options(p)
    add_data_options(p)
    p.add_argument(
        "--recipe",
        default="int8",
        help="built-in recipe name, recipe .yaml, or 'auto': an automatic "
        "search (presso search with its defaults; --trials, --timeout) (default: int8)",
    )
    p.add_argument("--out", metavar="DIR", help="artifact folder (default: ./presso-NAME-RECIPE)")
    p.add_argument(
        "--packed",
        action="store_true",
        help="also write model.packed: the weights entropy-coded (sparse + low-bit + LZMA), "
        "with its size in the report (recipes with a 'pack' stage always do)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last finished stage (OUT.checkpoint/)",
    )
    add_search_budget(p)
    add_run_options(p)
    add_train_texts_option(p)
    add_bench_options(p)
    add_common(p)
    # --recipe auto hands these arguments to presso search's run, which reads its own options too
    p.set_defaults(run=run, **search_defaults())


def checkpoint_dir(out: Path) -> Path:
    """Where a run keeps its finished stages: beside the artifact, never inside it (the
    artifact folder is written atomically at the end)."""
    return out.with_name(out.name + ".checkpoint")


def run(args) -> int:
    if args.recipe == "auto":
        from presso.errors import PressoError

        if args.resume or args.packed:
            raise PressoError(
                "--recipe auto runs a search, which resumes by itself (run the same command "
                "again); drop --resume / --packed."
            )
        return search_run(args, out_default="auto")
    if args.trials is not None or args.timeout is not None:
        from presso.errors import PressoError

        raise PressoError(
            "--trials and --timeout size an automatic search: use them with --recipe auto (or presso search)."
        )
    import presso
    from presso.files import output_lock
    from presso.recipe.result import check_output_dir
    from presso.recipe.schema import load_recipe
    from presso.report.terminal import print_summary

    recipe = load_recipe(args.recipe)  # a bad recipe fails now, before the model is loaded or trained
    progress = make_progress(args)
    model, data, task, name = model_and_data(args, progress)
    weights = args.weights
    recipe_name = Path(args.recipe).stem if args.recipe.endswith((".yaml", ".yml")) else args.recipe
    out = Path(args.out or f"presso-{name}-{recipe_name}")
    with output_lock(out):  # a second run writing this folder fails now, not at the end
        check_output_dir(out)  # fail before minutes of work, not after
        checkpoint = checkpoint_dir(out)
        args.checkpoint_hint = checkpoint  # for the interrupted message (cli/main.py)
        result = presso.compress(
            model,
            recipe,
            data=data,
            settings=run_settings(args, task, weights),
            progress=progress,
            pack=args.packed,
            checkpoint=checkpoint,
            resume=args.resume,
        )
        result.save(out)
    if args.json:
        print_json(result.report_json())
    print_summary(result.report, console(args), out_dir=str(out))
    return 0
