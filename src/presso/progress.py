"""How long-running work tells the user where it is, without knowing who listens.

The library reports to a :class:`Progress`; the default is silent, the CLI passes one
that draws rich progress bars.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Advance(Protocol):
    """What :meth:`Progress.task` yields: ``advance(n=1, description=None)``."""

    def __call__(self, n: int = 1, description: str | None = None) -> None: ...


class Progress:
    """Silent progress (the Python API's default)."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        """Something the user should know before trusting the result (also in the report)."""
        self.log(f"warning: {message}")

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        """Yields ``advance(n=1, description=None)``; a new description replaces the old
        one (training shows its latest loss there)."""
        yield lambda n=1, description=None: None


SILENT = Progress()
