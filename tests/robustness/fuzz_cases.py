"""How many generated cases each robustness surface tried in this run: the root
conftest prints the tally at the end of the run (``pytest_terminal_summary``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

tried: Counter[str] = Counter()


def refused_by_the_cli(argv: list[str], out: Path, capsys) -> None:
    """``presso argv`` refuses: exit code 2, its last stderr line the one-line reason (progress
    lines may come before it), no traceback, and nothing at ``out``."""
    from presso.cli.main import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-500:]
    assert err.endswith("\n") and err.splitlines()[-1].startswith("presso: error: "), err[-500:]
    assert err.count("presso: error:") == 1
    assert not out.exists()
