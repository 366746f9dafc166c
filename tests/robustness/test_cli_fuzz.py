"""Generated command lines for ``presso compress``: hostile option values (negative, zero,
huge, NaN, text where a number goes), conflicting flags and awkward ``--out`` paths (a file,
a folder under a file, a folder holding other files, spaces and unicode).

Each is refused in one line with exit code 2 and nothing written, or it is a valid command
and reaches the compression itself, which is replaced here by a stand-in: the test is about
the door, not the minutes of work behind it. Values no run could use must be refused.
"""

from __future__ import annotations

import math

import pytest
from fuzz_cases import tried
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import presso
from presso.cli.main import main

NUMBERS = [
    "-1",
    "0",
    "1",
    "0.5",
    "1e308",
    "-1e-9",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999",
    "abc",
    "",
    "0x10",
]
OPTIONS = {  # flag -> does it take an integer?
    "--max-drop": False,
    "--calibration-fraction": False,
    "--seed": True,
    "--seq-len": True,
    "--threads": True,
    "--rounds": True,
    "--batch": True,
    "--trials": True,
    "--timeout": False,
}
FLAGS = ["--packed", "--resume", "--json", "--quiet"]
OUTS = ["fresh", "a file", "under a file", "other files", "spaces and unicode", "empty folder"]


class Reached(Exception):
    """The command got past every check to the compression itself."""


def _parsed(text: str, integer: bool) -> float | None:
    """The value argparse makes of ``text`` (None: it refuses it)."""
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return None


def _unusable(flag: str, value: float) -> bool:
    """Whether no run could use ``value`` for ``flag``: it must be refused."""
    if flag == "--max-drop":
        return not (math.isfinite(value) and value >= 0)
    if flag == "--calibration-fraction":
        return not 0 < value < 1
    if flag == "--seed":
        return not 0 <= value < 2**32
    if flag in ("--seq-len", "--threads", "--rounds", "--batch"):
        return value < 1
    return flag in ("--trials", "--timeout")  # they size a search: refused with a recipe


def _out(kind: str, root) -> str:
    if kind == "a file":
        (root / "file").write_text("x")
        return str(root / "file")
    if kind == "under a file":
        (root / "file").write_text("x")
        return str(root / "file" / "art")
    if kind == "other files":
        (root / "mine").mkdir()
        (root / "mine" / "notes.txt").write_text("keep me")
        return str(root / "mine")
    if kind == "empty folder":
        (root / "empty").mkdir()
        return str(root / "empty")
    return str(root / ("my art ünï 模型" if kind == "spaces and unicode" else "art"))


@pytest.fixture
def stand_in(monkeypatch):
    def compress(*args, **kwargs):
        raise Reached()

    monkeypatch.setattr(presso, "compress", compress)


COMMAND_LINES = {
    "values": st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.sampled_from(NUMBERS), max_size=3),
    "flags": st.lists(st.sampled_from(FLAGS), max_size=2, unique=True),
    "out": st.sampled_from(OUTS),
}
FIXTURES = [HealthCheck.function_scoped_fixture]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=FIXTURES)
@given(**COMMAND_LINES)
def test_generated_command_lines_are_refused_in_one_line_or_valid(
    values, flags, out, stand_in, tmp_path_factory, capsys
):
    _check(values, flags, out, tmp_path_factory, capsys)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=FIXTURES)
@given(**COMMAND_LINES)
def test_long_profile_command_lines(values, flags, out, stand_in, tmp_path_factory, capsys):
    _check(values, flags, out, tmp_path_factory, capsys)


def _check(values, flags, out, tmp_path_factory, capsys) -> None:
    root = tmp_path_factory.mktemp("cli")
    target = _out(out, root)
    argv = [
        "compress",
        "--example",
        "digits",
        "--out",
        target,
        "--recipe",
        "int8",
        *flags,
    ]
    for flag, text in values.items():
        argv += [f"{flag}={text}"]  # "=": a value like -1 is not read as a flag
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    capsys.readouterr()
    try:
        code = main(argv)
    except Reached:
        code = None
        tried["command lines through `presso compress`: valid ones"] += 1
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    tried["command lines through `presso compress`"] += 1
    assert "Traceback" not in err
    parsed = {flag: _parsed(text, OPTIONS[flag]) for flag, text in values.items()}
    unusable = [f for f, v in parsed.items() if v is None or _unusable(f, v)]
    if out in ("a file", "under a file", "other files"):
        unusable.append("--out")
    if unusable:
        assert code == 2, (argv, unusable, err[-500:])
    if code is not None:
        assert code == 2, (argv, err[-500:])
        lines = err.splitlines()
        assert lines and "error: " in lines[-1] and err.count("error: ") == 1, (argv, err[-500:])
    # nothing written: the folders are as they were (the lock file is removed with its run)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, argv
