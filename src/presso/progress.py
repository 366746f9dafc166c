"""How long-running work tells the user where it is, without knowing who listens.

The library reports to a :class:`Progress`; the default is silent, the CLI passes one
that draws rich progress bars.
"""

from __future__ import annotations

from contextlib import contextmanager


class Progress:
    """Silent progress (the Python API's default)."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        """Something the user should know before trusting the result (also in the report)."""
        self.log(f"warning: {message}")

    @contextmanager
    def task(self, description: str, total: int | None = None):
        """Yields ``advance(n=1, description=None)``; a new description replaces the old
        one (training shows its latest loss there)."""
        yield lambda n=1, description=None: None


SILENT = Progress()
