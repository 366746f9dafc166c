"""How many generated cases each robustness surface tried in this run: the root
conftest prints the tally at the end of the run (``pytest_terminal_summary``)."""

from __future__ import annotations

from collections import Counter

tried: Counter[str] = Counter()
