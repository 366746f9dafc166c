"""``presso report DIR`` (re-render report.html from report.json) and ``presso compare DIR...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from presso.cli.common import add_common, console, print_json
from presso.files import write_text_atomic

REPORT_HELP = "re-render an artifact's report.html from its report.json"
COMPARE_HELP = "compare artifacts: quality vs latency and size, as one HTML page and a table"


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help=REPORT_HELP,
        description=REPORT_HELP + " (e.g. after upgrading presso).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  presso report presso-digits-int8
  presso report presso-digits-int8 --out /tmp/digits.html --open
  presso report presso-digits-int8 --json --quiet > report.json

The page is one self-contained file (inline CSS and SVG charts; no scripts, no network).""",
    )
    p.add_argument("dir", metavar="DIR", help="artifact folder written by presso compress")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default: DIR/report.html)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    add_common(p)
    p.set_defaults(run=run_report)

    c = sub.add_parser(
        "compare",
        help=COMPARE_HELP,
        description=COMPARE_HELP + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  presso compare presso-digits-int8 presso-digits-int4 presso-digits-slim
  presso compare runs/* --out runs/compare.html
  presso compare a/ b/ --json --quiet

Each result is a labelled point of quality (its primary metric on held-out rows) against
batch-1 latency p50 and against size, with the baseline. Numbers measured on different
machines, or with different primary metrics, are not comparable: presso warns when they are.""",
    )
    c.add_argument("dirs", nargs="+", metavar="DIR", help="artifact folders written by presso compress")
    c.add_argument(
        "--out",
        metavar="FILE",
        default="compare.html",
        help="where to write the page (default: compare.html in the current folder)",
    )
    c.add_argument("--open", action="store_true", help="open the page in the default web browser")
    add_common(c)
    c.set_defaults(run=run_compare)


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file beside ``path`` and rename it into place: a reader never
    sees half a page, and an interrupted write leaves the old file."""
    from presso.errors import PressoError

    path = Path(path)
    if path.is_dir():
        raise PressoError(f"--out '{path}' is a folder. Give a file name, e.g. {path / 'page.html'}.")
    if not path.parent.is_dir():
        raise PressoError(f"The folder of --out '{path}' does not exist. Create it or choose another path.")
    write_text_atomic(path, text)


def _open(path: Path) -> None:
    import webbrowser

    webbrowser.open(path.resolve().as_uri())


def run_report(args) -> int:
    from presso.report.compare import load_report
    from presso.report.html import render_html
    from presso.report.terminal import print_summary

    report = load_report(args.dir)
    out = Path(args.out) if args.out else Path(args.dir) / "report.html"
    write_atomic(out, render_html(report))
    if args.json:
        print_json(json.dumps(report.model_dump(mode="json"), indent=2))
    con = console(args)
    print_summary(report, con)
    return _wrote(args, con, out)


def run_compare(args) -> int:
    from presso.report.compare import Result, load_report, print_comparison, records, render_compare, warnings

    results = [Result(Path(d).resolve().name, load_report(d)) for d in args.dirs]
    out = Path(args.out)
    write_atomic(out, render_compare(results))
    if args.json:
        print_json(
            json.dumps(
                {"out": str(out), "warnings": warnings(results), "results": records(results)}, indent=2
            )
        )
    con = console(args)
    print_comparison(results, con)
    return _wrote(args, con, out)


def _wrote(args, con, out: Path) -> int:
    con.print(f"Wrote [bold]{out}[/bold]")
    if args.open:
        _open(out)
    return 0
