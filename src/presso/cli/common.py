"""Options and output helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from presso.progress import Progress


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: all cores this process may use)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="interleaved timing rounds (default 10)")
    parser.add_argument("--batch", type=int, default=64,
                        help="batch size for the throughput measurement (default 64)")


def bench_settings(args):
    from presso.errors import PressoError
    from presso.measure.bench import BenchSettings

    if args.threads is not None and args.threads < 1:
        raise PressoError(f"--threads must be >= 1. Got {args.threads}.")
    if args.rounds < 1 or args.batch < 1:
        raise PressoError("--rounds and --batch must be >= 1.")
    return BenchSettings(rounds=args.rounds, throughput_batch=args.batch, threads=args.threads)


def console(args):
    """Where tables go: stdout, or stderr when stdout carries JSON; nowhere with --quiet."""
    from rich.console import Console

    return Console(stderr=bool(args.json), quiet=bool(args.quiet))


class RichProgress(Progress):
    """Progress drawn with rich on stderr: a spinner per step, a bar when the total is known."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]· {message}[/dim]")

    @contextmanager
    def task(self, description: str, total: int | None = None):
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total:
            columns.append(BarColumn())
        columns.append(TimeElapsedColumn())
        with Bar(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task_id, n)
            if total:
                bar.update(task_id, completed=total)


def make_progress(args) -> Progress:
    return RichProgress(enabled=not args.quiet)


def print_json(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
