"""Errors that presso reports to users as one line instead of a traceback."""

from __future__ import annotations

import unicodedata


class PressoError(ValueError):
    """Bad input or an unsupported request.

    The message names the problem and the fix; the CLI prints it on one line and
    exits with code 2. A ``ValueError`` (and so still an ``Exception``), so that code
    which guards a call with ``except ValueError`` also catches a bad option.
    """

    exit_code = 2

    def __init__(self, *args: object):
        # A message quotes what the user gave (file, column, key names): whatever those
        # hold, the message stays one line and drives no terminal.
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class BudgetError(PressoError):
    """No compressed variant meets the quality budget; nothing is written (exit code 1)."""

    exit_code = 1


class NothingToDo(PressoError):
    """A stage finds nothing it could change for the better (e.g. no layer whose factors
    would pay). A recipe stage marked ``optional`` is then skipped instead of failing."""


# Control, format, private, unassigned and surrogate characters and the line / paragraph
# separators: what can break a line or drive a terminal. Spaces of any kind stay.
_ESCAPED = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}


def one_line(text: str) -> str:
    """``text`` safe to print as one terminal line: line breaks, escape sequences and
    other control characters (a file or key name may hold any of them) shown escaped,
    as Python writes them in a string literal, instead of acting on the terminal."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(c) in _ESCAPED
        else c
        for c in text
    )


def reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name when the message is empty), cut
    to ``limit`` characters: what a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
