"""The in-memory dataset every model sees: named input arrays plus optional targets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from presso.data.sample import SampleInfo
from presso.errors import PressoError
from presso.runtime.lengths import typical_row


def rows_of(name: str, array: np.ndarray) -> int:
    """The rows of ``array`` (its first axis), or one line saying it has none."""
    if np.ndim(array) == 0:
        raise PressoError(
            f"Array {name!r} is a single value (shape ()); give one row per example on the first axis."
        )
    return len(array)


@dataclass
class Dataset:
    """Rows of model inputs, keyed by the model's input names.

    ``inputs`` maps an input name to an array whose first axis is the row; ``target``
    holds labels or regression targets (or ``None`` when the data has none); ``texts``
    keeps the raw strings of a text dataset so reports can show examples; ``groups`` holds
    the query (or session) id of each row of ranking data, which :func:`split` keeps whole
    and every subset carries along. ``train_texts`` gives (building it on its first call) a
    file of further texts of the same kind, one per line, none equal to a row here (the
    minilm example's corpus): a distill stage trains on it when given no ``train_data``
    (subsets do not carry it).
    """

    inputs: dict[str, np.ndarray]
    target: np.ndarray | None = None
    source: str = "in-memory arrays"
    texts: list[str] | None = None
    feature_names: list[str] | None = field(default=None, repr=False)
    groups: np.ndarray | None = None
    train_texts: Callable[[], Path] | None = None
    sample: SampleInfo | None = None  # set when the rows are a sample of a larger file

    def __post_init__(self) -> None:
        if not self.inputs:
            raise PressoError("The dataset has no input arrays: give at least one array of rows.")
        arrays = {**self.inputs, "target": self.target, "groups": self.groups}
        lengths = {name: rows_of(name, a) for name, a in arrays.items() if a is not None}
        if len(set(lengths.values())) != 1:
            raise PressoError(
                f"The data's arrays have different numbers of rows: {lengths}. "
                "Give arrays with one row per example on the first axis."
            )
        if len(self) == 0:
            raise PressoError(f"The data from {self.source} has no rows.")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def has_labels(self) -> bool:
        return self.target is not None

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(
            inputs={k: v[index] for k, v in self.inputs.items()},
            target=None if self.target is None else self.target[index],
            source=self.source,
            texts=None if self.texts is None else [self.texts[i] for i in index],
            feature_names=self.feature_names,
            groups=None if self.groups is None else self.groups[index],
        )

    def head(self, n: int) -> Dataset:
        """The first ``n`` rows, exactly: timing at batch 1 and export samples need that many
        (their group ids come along, cut or not; no metric is measured on a head)."""
        return self.subset(np.arange(min(n, len(self))))

    def timing_row(self) -> dict[str, np.ndarray]:
        """One row to time models at batch 1: for text, a text of median length at its
        real length (what users send; the padding of stored rows is not); else the first."""
        return typical_row(self.inputs)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}


@dataclass(frozen=True)
class Split:
    calibration: Dataset
    evaluation: Dataset
    seed: int
    calibration_fraction: float
    calibration_index: np.ndarray  # row numbers in the original data
    evaluation_index: np.ndarray

    grouped: bool = False

    def describe(self) -> dict:
        return {
            "method": "seeded random permutation" + (" of whole groups" if self.grouped else ""),
            "seed": self.seed,
            "calibration_fraction": self.calibration_fraction,
            "calibration_rows": len(self.calibration),
            "evaluation_rows": len(self.evaluation),
            "note": "calibration rows calibrate and choose variants; every reported "
            "metric is measured on the held-out evaluation rows only",
        }


def split(data: Dataset, calibration_fraction: float = 0.3, seed: int = 0) -> Split:
    """Split rows deterministically into calibration and held-out evaluation parts."""
    if not 0.0 < calibration_fraction < 1.0:
        raise PressoError(f"The calibration fraction must be in (0, 1). Got {calibration_fraction} instead.")
    n = len(data)
    if n < 4:
        raise PressoError(
            f"The data has {n} rows; presso needs at least 4 (some to calibrate, "
            "some to evaluate). Give more rows."
        )
    if data.groups is not None:
        cal, ev = _split_groups(data.groups, calibration_fraction, seed)
    else:
        order = np.random.default_rng(seed).permutation(n)
        n_cal = min(max(1, round(n * calibration_fraction)), n - 2)
        cal, ev = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    return Split(
        calibration=data.subset(cal),
        evaluation=data.subset(ev),
        seed=seed,
        calibration_fraction=calibration_fraction,
        calibration_index=cal,
        evaluation_index=ev,
        grouped=data.groups is not None,
    )


def _split_groups(
    groups: np.ndarray, calibration_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the calibration and evaluation parts, whole groups each: groups in a
    seeded order join the calibration part until it holds the fraction's share of rows (a
    query split across both parts would let calibration see rows it is evaluated on)."""
    ids, counts = np.unique(groups, return_counts=True)
    if len(ids) < 2:
        raise PressoError(
            f"The data has {len(ids)} group; presso needs at least 2 (some to calibrate, some "
            "to evaluate). Check --group."
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    filled = np.cumsum(counts[order])
    n_groups = int(np.searchsorted(filled, len(groups) * calibration_fraction)) + 1
    n_groups = min(max(1, n_groups), len(ids) - 1)
    in_cal = np.isin(groups, ids[order[:n_groups]])
    return np.flatnonzero(in_cal), np.flatnonzero(~in_cal)
