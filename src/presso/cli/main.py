"""Entry point: registers sub-commands and turns errors into one line and an exit code.

Exit codes: 0 success; 1 the quality budget could not be met (nothing written);
2 bad input (model, data, recipe or option); 130 interrupted (Ctrl-C, nothing written);
143 terminated (SIGTERM, nothing written).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import NoReturn

from presso.cli import bench, compress, distill, evaluate, recipes, report, search, serve

COMMANDS = (compress, search, distill, bench, evaluate, recipes, report, serve)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like presso's own: the problem and where help
    is, not the usage block first (a sub-command's usage runs to a dozen lines)."""

    def error(self, message: str) -> NoReturn:
        from presso.errors import one_line

        self.exit(2, f"{self.prog}: error: {one_line(message)} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from presso import __version__

    parser = OneLineParser(
        prog="presso",
        description="Compress trained models for fast CPU inference on ONNX Runtime, and prove it: "
        "every result comes with quality, latency, throughput and size measured "
        "against the original in the same run.",
        epilog="Exit codes: 0 ok, 1 quality budget not met, 2 bad input, 130 interrupted, 143 terminated. "
        "Start with: presso compress --example digits",
    )
    parser.add_argument("--version", action="version", version=f"presso {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is: every ``finally`` and cleanup runs as for
    Ctrl-C (the run's work folder and its temporary files are removed), where Python's
    default for SIGTERM ends the process on the spot and leaves them behind."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # signal handlers can only be set from the main thread (not where main() is embedded)
    handle = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handle else None
    try:
        return _run(args)
    finally:
        if handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(args) -> int:
    from presso.errors import PressoError, one_line

    debug = getattr(args, "debug", False) or os.environ.get("PRESSO_DEBUG") == "1"
    try:
        from presso.runtime.held_import import held_import

        held_import("onnxruntime")  # every command runs it; imported here, a Ctrl-C cannot break it
        return args.run(args) or 0
    except PressoError as exc:
        if debug:
            log = getattr(exc, "log_path", None)  # a failed export's full output
            if log is not None and log.is_file():
                sys.stderr.write(log.read_text(encoding="utf-8", errors="replace"))
            raise
        print(f"presso: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        hint = getattr(args, "checkpoint_hint", None)
        resume = ""
        if getattr(args, "interrupt_hint", None):
            resume = " " + args.interrupt_hint
        elif args.command == "distill":
            resume = " Training was checkpointed: run the same command with --resume to continue."
        elif hint is not None and (hint / "state.json").is_file():
            resume = (
                f" Finished stages are kept in {hint}: run the same command with --resume to "
                "continue from the last one."
            )
        if isinstance(exc, Terminated):
            print(f"presso: terminated (SIGTERM); nothing was written.{resume}", file=sys.stderr)
            return 128 + signal.SIGTERM  # 143, the code a shell shows for a process SIGTERM ended
        print(f"presso: interrupted; nothing was written.{resume}", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
