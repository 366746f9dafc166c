"""Training batches drawn lazily, for data that is not a pair of arrays in memory.

:func:`presso.train.fit` takes either ``(inputs, targets)`` arrays or a
:class:`BatchSource`: something that knows its number of rows and yields one epoch of
``(inputs, targets)`` batches in an order drawn from the fit's seeded generator (so a
resumed fit draws the same batches as one never interrupted).

:class:`LengthBuckets` is the source for token sequences: each batch holds rows of similar
length and is padded only to its own longest row. Sorting whole epochs by length would
give the same batches every epoch, so rows are shuffled, cut into large windows, sorted
by length within each window and cut into batches, and the batches are shuffled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

Batch = tuple[dict[str, np.ndarray], np.ndarray]


@runtime_checkable
class BatchSource(Protocol):
    """Rows :func:`presso.train.fit` trains on, one epoch of batches at a time."""

    def __len__(self) -> int:
        """Rows per epoch."""
        ...

    def epoch(self, gen: torch.Generator) -> Iterator[Batch]:
        """One pass over every row in batches, in an order drawn from ``gen`` only."""
        ...


def _seed_from(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


class LengthBuckets:
    """Batches of rows of similar length (see the module docstring).

    ``lengths``: each row's length; ``fetch(rows)``: the batch of those row numbers, padded
    to its longest row (the caller knows how: tokenize lines, trim arrays); ``window``: rows
    sorted together, in batches (larger: less padding, less randomness).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        fetch: Callable[[np.ndarray], Batch],
        batch_size: int,
        window: int = 50,
    ):
        self.lengths = np.asarray(lengths)
        self.fetch = fetch
        self.batch_size = batch_size
        self.window = window

    def __len__(self) -> int:
        return len(self.lengths)

    def batch_rows(self, gen: torch.Generator) -> list[np.ndarray]:
        """The epoch's batches as row numbers: every row exactly once."""
        rng = np.random.default_rng(_seed_from(gen))
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches: list[np.ndarray] = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch(self, gen: torch.Generator) -> Iterator[Batch]:
        for rows in self.batch_rows(gen):
            yield self.fetch(rows)
