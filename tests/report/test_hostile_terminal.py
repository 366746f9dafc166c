"""Names a user chose reach the terminal too: the compress summary, the comparison table and
progress lines print them as text. An escape sequence is shown escaped instead of driving
the terminal, a line break does not break the line, and square brackets are drawn instead of
read as rich markup (``[/]`` alone would raise after the artifact was written)."""

from __future__ import annotations

import io

from rich.console import Console
from test_report_html import make_report

from presso.cli.common import RichProgress
from presso.report.compare import Result, print_comparison
from presso.report.terminal import print_summary, shown

# An OSC sequence that retitles the window, a colour, a line break, and markup: closing
# nothing, opening a style, and a link.
NAME = "model\x1b]0;pwned\x07[/]\n[bold red]loud[link=file:///etc/passwd]x\x1b[31m"


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer  # rich itself adds no ESC


def test_shown_escapes_control_characters_and_markup():
    assert (
        shown(NAME) == "model\\x1b]0;pwned\\x07\\[/]\\n\\[bold red]loud\\[link=file:///etc/passwd]x\\x1b[31m"
    )
    assert shown("MiniLM-L6 · int8 [2:4]") == "MiniLM-L6 · int8 [2:4]"  # plain names are untouched


def test_the_compress_summary_prints_hostile_names_as_text():
    console, out = _console()
    report = make_report(name=NAME, recipe=NAME, cpu=NAME)
    report.notes.append(f"layer {NAME} stayed fp32")
    print_summary(report, console, out_dir=f"/tmp/{NAME}")
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert (
        text.count("model\\x1b]0;pwned\\x07[/]\\n[bold red]loud[link=file:///etc/passwd]x") == 4
    )  # title (name, recipe), note, folder


def test_the_comparison_and_progress_lines_print_hostile_names_as_text():
    console, out = _console()
    print_comparison([Result(NAME, make_report(name=NAME)), Result("b", make_report(stored=False))], console)
    progress = RichProgress()
    progress.console = console
    progress.log(f"reading {NAME}")
    progress.warn(f"column {NAME} is constant")
    with progress.task(f"training {NAME}", total=2) as advance:
        advance(1, description=f"epoch 1 of {NAME}")
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "reading model\\x1b]0;pwned\\x07[/]\\n[bold red]loud" in text
    assert "column model\\x1b]0;pwned" in text and "epoch 1 of model\\x1b]0;pwned" in text
