"""A seeded uniform sample of a data file too large for memory, taken in one streamed pass.

A run needs a few thousand rows to calibrate and to measure quality; a data file can hold
far more than fits in memory. Such a file is read in chunks, and each row gets a random key
from the run's seed: the rows with the smallest keys seen so far are kept (a bottom-k
sample, uniform without replacement, whatever the file's length), so memory holds at most
the sample and one chunk. Rows of one query group share a key, so a group is kept or
dropped whole. The sample comes back in file order: when every row fits it is the file
itself, exactly as the in-memory reader gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from presso.errors import PressoError

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of rows a run keeps from one data file


@dataclass(frozen=True)
class SampleInfo:
    """How a dataset was cut down from its file (recorded in the report)."""

    rows_in_file: int
    memory_budget_bytes: int

    def said(self, source: object, kept: int, doing: str = "using") -> str:
        """The line a command prints when it works on this sample of ``source``."""
        return (
            f"data: {source} holds {self.rows_in_file:,} rows, more than --data-memory "
            f"({self.memory_budget_bytes / 1e6:,.0f} MB) holds: {doing} a seeded uniform sample "
            f"of {kept:,} of them"
        )

    def describe(self) -> dict:
        return {
            "rows_in_file": self.rows_in_file,
            "memory_budget_bytes": self.memory_budget_bytes,
            "method": "seeded uniform sample of the file's rows, streamed in one pass "
            "(whole query groups); split and metrics use the sampled rows",
        }


class RowSample:
    """At most ``capacity`` rows of the chunks :meth:`add` is given, a seeded uniform
    sample of them, in the order they came.

    Columns are arrays with one row per entry on the first axis (texts as an object
    array); every chunk has the same columns. ``groups`` (optional, per row) makes rows of
    one group share their key.
    """

    def __init__(self, capacity: int, seed: int):
        if capacity < 1:
            raise ValueError("a sample keeps at least one row")
        self.capacity = capacity
        self.rng = np.random.default_rng([seed, 0x5A3D])  # not the split's stream
        self.seen = 0
        self.cutoff = np.inf  # rows keyed at or above it can never be kept
        self.kept: dict[str, np.ndarray] | None = None
        self.keys = np.empty(0)
        self.order = np.empty(0, dtype=np.int64)
        self.group_keys: dict = {}

    def add(self, columns: dict[str, np.ndarray], groups: np.ndarray | None = None) -> None:
        n = len(next(iter(columns.values())))
        keys = self._keys(n, groups)
        order = np.arange(self.seen, self.seen + n)
        self.seen += n
        take = keys < self.cutoff
        if not take.any():
            return
        chunk = {k: v[take] for k, v in columns.items()}
        keys, order = keys[take], order[take]
        if self.kept is None:
            self.kept = chunk
        else:
            self.kept = {k: np.concatenate([self.kept[k], chunk[k]]) for k in self.kept}
        self.keys = np.concatenate([self.keys, keys])
        self.order = np.concatenate([self.order, order])
        if len(self.keys) > self.capacity:
            # Keep the smallest keys: every row keyed below the (capacity+1)-th smallest (a
            # group that straddles it goes whole, so a grouped sample can hold fewer rows).
            self.cutoff = float(np.partition(self.keys, self.capacity)[self.capacity])
            keep = self.keys < self.cutoff
            self.kept = {k: v[keep] for k, v in self.kept.items()}
            self.keys, self.order = self.keys[keep], self.order[keep]

    def _keys(self, n: int, groups: np.ndarray | None) -> np.ndarray:
        if groups is None:
            return self.rng.random(n)
        ids, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        of_id = np.empty(len(ids))
        for j in np.argsort(first):  # new groups keyed in the order they appear: seeded, stable
            g = ids[j].item()
            key = self.group_keys.get(g)
            if key is None:
                key = self.group_keys[g] = float(self.rng.random())
            of_id[j] = key
        return of_id[inverse.reshape(-1)]

    def result(self) -> dict[str, np.ndarray]:
        """The kept rows in the order they came."""
        if self.kept is None or not len(self.keys):
            raise PressoError("The data file has no rows.")
        first = np.argsort(self.order, kind="stable")
        return {k: v[first] for k, v in self.kept.items()}

    @property
    def sampled(self) -> bool:
        return self.seen > len(self.order)


def parse_bytes(text: str) -> int:
    """'512MB', '2GB', '1.5G', '800000' -> bytes (decimal units; a trailing 'iB' binary)."""
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    s = text.strip().upper().replace(" ", "")
    binary = s.endswith("IB")
    s = s[:-2] if binary else s[:-1] if s.endswith("B") else s
    unit = s[-1] if s and s[-1] in "KMGT" else ""
    number = s[: len(s) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    scale = 1024 ** ("KMGT".index(unit) + 1) if binary and unit else units[unit]
    if not (np.isfinite(value) and value > 0):
        raise PressoError(f"--data-memory: '{text}' is not a size; give e.g. 512MB or 2GB.")
    return int(value * scale)
