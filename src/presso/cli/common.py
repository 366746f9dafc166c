"""Options and output helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from presso.progress import Progress


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks instead of one-line errors (and a failed export's full log)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """MODEL and --example: what compress and search start from."""
    parser.add_argument(
        "model",
        nargs="?",
        help="an .onnx file, a Hugging Face model folder, or a "
        "factory 'file.py:fn' / 'package.module:fn' returning an nn.Module",
    )
    parser.add_argument(
        "--example",
        metavar="NAME",
        help="a built-in example instead of MODEL/--data: digits, tabular, forecast, anomaly, ranking, minilm",
    )


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data, --target, --weights, --task: what compress and distill read the model and rows with."""
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="held-out rows: .npz (X, optional y), .csv/.parquet (with --target), .txt (one text per line)",
    )
    parser.add_argument("--target", metavar="COLUMN", help="label column of a .csv/.parquet file")
    parser.add_argument(
        "--group",
        metavar="COLUMN",
        help="query / session id column of a .csv/.parquet file, for --task ranking (an .npz: array 'group')",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="state dict (.pt, loaded weights-only, or .safetensors) for a factory model",
    )
    parser.add_argument(
        "--task",
        choices=["classification", "regression", "forecast", "anomaly", "embedding", "ranking"],
        help="what the model does (inferred when obvious)",
    )
    parser.add_argument(
        "--output",
        metavar="NAME",
        help="the model output to compress for when forward returns several: a dict key or "
        "tuple index (an ONNX file: a graph output name); default: the first",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The budget, the split and the text length, shared by compress and distill."""
    parser.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="X",
        help="largest allowed drop of the budget's metric on held-out rows (default 0.01): absolute for "
        "scores (accuracy, ROC-AUC, NDCG@10, R2), relative for errors (0.01 = 1%% more MAE/RMSE/MAPE)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        metavar="NAME",
        help="the metric --max-drop applies to, any the task reports (default: accuracy, or "
        "balanced_accuracy on imbalanced classes; mae; roc_auc; mean_cosine; ndcg@10)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the calibration/evaluation split (default 0)"
    )
    parser.add_argument(
        "--calibration-fraction",
        type=float,
        default=None,
        metavar="F",
        help="share of rows used to calibrate, choose variants and train (default 0.3)",
    )
    parser.add_argument("--seq-len", type=int, default=128, help="token length for text data (default 128)")
    add_data_memory_option(parser)


def add_data_memory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-memory",
        type=data_memory,
        default=None,
        metavar="SIZE",
        help="memory the data's rows may take, e.g. 512MB (default 2GB): a larger --data file is "
        "streamed and a seeded uniform sample of its rows that fits is used (the report says so)",
    )


def data_memory(text: str) -> int:
    from presso.data.sample import parse_bytes
    from presso.errors import PressoError

    try:
        return parse_bytes(text)
    except PressoError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--data-memory: ")) from None


def add_train_texts_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-texts",
        metavar="FILE",
        help="a .txt of unlabeled texts (one a line, any size) a text model's students learn from: "
        "the fast recipe's encoder student, --recipe auto's students (streamed, labelled by the "
        "original model; --example minilm brings its own corpus)",
    )


def model_and_data(args, progress, what: str = "MODEL") -> tuple:
    """(model, data, task, name) from MODEL/--data or --example, with one-line errors."""
    import presso
    from presso.errors import PressoError

    if args.example and (args.model or args.data):
        raise PressoError(f"--example brings its own model and data; drop {what}/--data, or drop --example.")
    if not args.example and not args.model:
        raise PressoError(f"Give a {what} (or --example NAME). See: presso {args.command} --help")
    if args.example:
        ex = presso.load_example(args.example, progress=progress.log)
        return ex.model, ex.data, args.task or ex.task, args.example
    spec = str(args.model).rstrip("/")
    name = spec.rsplit(":", 1)[-1] if ":" in spec and not Path(spec).exists() else Path(spec).stem
    return args.model, args.data, args.task, name


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: all cores this process may use)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument(
        "--batch", type=int, default=64, help="batch size for the throughput measurement (default 64)"
    )


def bench_settings(args):
    from presso.measure.bench import BenchSettings

    return BenchSettings(rounds=args.rounds, throughput_batch=args.batch, threads=args.threads)


def run_settings(args, task: str | None = None, weights: str | None = None):
    """The run settings the command line gives (:class:`presso.RunSettings`), one definition
    for compress, distill and search (``task`` / ``weights`` as the command resolved them)."""
    from presso.recipe.run import RunSettings

    return RunSettings(
        task=task,
        max_drop=args.max_drop,
        metric=args.metric,
        target=args.target,
        group=args.group,
        weights=weights,
        seed=args.seed,
        calibration_fraction=args.calibration_fraction,
        seq_len=args.seq_len,
        bench=bench_settings(args),
        output=getattr(args, "output", None),
        train_texts=getattr(args, "train_texts", None),
        data_memory=args.data_memory,
    )


def console(args):
    """Where tables go: stdout, or stderr when stdout carries JSON; nowhere with --quiet."""
    from rich.console import Console

    return Console(stderr=bool(args.json), quiet=bool(args.quiet))


class RichProgress(Progress):
    """Progress drawn with rich on stderr: a spinner per step, a bar when the total is known."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        from presso.report.terminal import shown

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.shown = shown  # messages carry the user's names: escaped for the terminal

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]· {self.shown(message)}[/dim]")

    def warn(self, message: str) -> None:
        if self.enabled:
            self.console.print(
                f"[yellow]warning: {self.shown(message)}[/yellow]", highlight=False, soft_wrap=True
            )

    @contextmanager
    def task(self, description: str, total: int | None = None):
        if not self.enabled:
            yield lambda n=1, description=None: None
            return
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total:
            columns.append(BarColumn())
        columns.append(TimeElapsedColumn())
        with Bar(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(self.shown(description), total=total)

            def advance(n=1, description=None):
                shown = None if description is None else self.shown(description)
                bar.update(task_id, advance=n, description=shown)

            yield advance
            if total:
                bar.update(task_id, completed=total)


def make_progress(args) -> Progress:
    return RichProgress(enabled=not args.quiet)


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
