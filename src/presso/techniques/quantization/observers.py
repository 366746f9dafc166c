"""Calibration observers: turn a stream of activation batches into a quantization range.

Each observer takes numpy batches through ``observe(x)`` and answers ``range_() -> (lo, hi)``.
The histogram-based ones (percentile, MSE, entropy) share one :class:`StreamingHistogram`,
so calibrating a BERT-size model costs O(bins) memory per observed tensor instead of keeping
raw values (the failure mode of ONNX Runtime's percentile/entropy calibrators).

Histogram design and error
--------------------------
``bins`` int64 counts (default 2048) over ``[lo_, hi_]``, a range fitted to the first batch
and always containing 0 (a quantized range must represent zero). When a batch falls outside,
the bin width is multiplied by the smallest integer ``k`` that covers it and the left edge
moves left by a whole number ``m`` of old bins (the spare bins split between both sides, or
all on the far side for one-signed data so an edge stays at 0). Old bin ``j`` then lies
entirely inside new bin ``(m + j) // k``: counts are only merged, never split, so the result
equals binning every value straight into the final grid (up to float ties at edges).

Error: the CDF is exact at bin edges and, interpolated linearly inside a bin, off by at most
that bin's mass; a quantile is off by at most one bin width. The smallest ``k`` keeps the
range under about twice the span it must cover (``max(max_, 0) - min(min_, 0)``), so a
quantile errs by at most ``~2 * span / bins``: 0.1% of the span with 2048 bins, whatever the
number of batches or how small the first one was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from presso.errors import PressoError

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "StreamingHistogram",
    "make_observer",
]


def _batch(x, owner) -> tuple[np.ndarray, float, float]:
    """Flatten a batch to float32/float64 and return it with its min and max, rejecting NaN/inf."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x = x.reshape(-1)  # (N,)
    if x.size == 0:
        return x, math.nan, math.nan
    lo, hi = float(x.min()), float(x.max())  # NaN propagates; inf shows at an end
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(x.size - np.isfinite(x).sum())
        raise PressoError(
            f"{type(owner).__name__}.observe() got {bad} NaN or infinite values out of "
            f"{x.size}. Check the model's inputs and activations for overflow, or drop "
            "the batch before calibrating."
        )
    return x, lo, hi


def _check_bits(bits, owner) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise PressoError(
            f"The 'bits' option of {type(owner).__name__} must be an int in [2, 16]. Got {bits!r} instead."
        )


class _Observer:
    """Shared plumbing: ``n_seen_`` and the "no data yet" error."""

    # Fitted state, set by ``observe`` (declared here for the type checker only: an
    # instance has none of these until its first batch, which ``hasattr`` checks rely on).
    n_seen_: int

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({params})"

    def _require_data(self) -> None:
        if getattr(self, "n_seen_", 0) == 0:
            raise PressoError(
                f"{type(self).__name__} has seen no data yet. Call observe(x) with at "
                "least one non-empty batch before range_()."
            )


class RangeObserver(Protocol):
    """What calibration asks of an observer: batches in, a quantization range out."""

    def observe(self, x) -> RangeObserver: ...

    def range_(self) -> tuple[float, float]: ...


class StreamingHistogram(_Observer):
    """Fixed-size histogram over a range that grows by integer factors (see module notes).

    Parameters
    ----------
    bins : int, default=2048
        Number of bins; memory is ``bins`` int64 counts however many values are observed.

    Examples
    --------
    >>> h = StreamingHistogram(bins=64).observe(np.arange(10.0)).observe(np.array([-30.0]))
    >>> h.n_seen_, h.counts_.shape, h.lo_ <= -30.0
    (11, (64,), True)
    """

    lo_: float
    hi_: float
    counts_: np.ndarray  # (bins,) int64
    min_: float
    max_: float

    def __init__(self, *, bins: int = 2048):
        self.bins = bins

    def _reset_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        self.lo_, self.hi_ = (lo, hi) if hi > lo else (0.0, 1.0)  # all zeros: refitted later
        self.counts_ = np.zeros(self.bins, dtype=np.int64)

    def _grow(self, xmin: float, xmax: float) -> None:
        B, b = self.bins, (self.hi_ - self.lo_) / self.bins
        tol = 1e-6 * b  # float slack: values this close to an edge go into the edge bin
        if xmin >= self.lo_ - tol and xmax <= self.hi_ + tol:
            return
        m = max(0, math.ceil((self.lo_ - xmin) / b))  # old bins added on the left
        right = max(B, math.ceil((xmax - self.lo_) / b))  # old-bin units from old lo_ to xmax
        k = math.ceil((m + right) / B)
        slack = k * B - m - right  # spare old bins: keep an edge at 0 for one-signed data
        m += 0 if min(xmin, self.min_) >= 0 else slack if max(xmax, self.max_) <= 0 else slack // 2
        merged = np.zeros(B, dtype=np.int64)
        np.add.at(merged, (m + np.arange(B)) // k, self.counts_)  # old bin j -> new bin (m+j)//k
        self.lo_ = self.lo_ - m * b
        self.hi_ = self.lo_ + k * B * b
        self.counts_ = merged

    def observe(self, x) -> StreamingHistogram:
        """Add one batch (any shape) to the histogram; returns ``self``."""
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 16:
            raise PressoError(
                f"The 'bins' option of StreamingHistogram must be an int >= 16. Got {self.bins!r} instead."
            )
        x, xmin, xmax = _batch(x, self)
        if x.size == 0:
            return self
        n_prev = getattr(self, "n_seen_", 0)
        if n_prev == 0:
            self.min_, self.max_ = xmin, xmax
        if n_prev == 0 or self.min_ == self.max_ == 0.0:  # only zeros so far: re-fit the range
            self._reset_range(xmin, xmax)
            self.counts_[self._index(np.zeros(1))] += n_prev
        self._grow(xmin, xmax)
        self.counts_ += np.bincount(self._index(x), minlength=self.bins)
        self.min_, self.max_ = min(self.min_, xmin), max(self.max_, xmax)
        self.n_seen_ = n_prev + x.size
        return self

    def _index(self, x: np.ndarray) -> np.ndarray:
        idx = ((x - self.lo_) * (self.bins / (self.hi_ - self.lo_))).astype(np.int64)  # (N,)
        return np.clip(idx, 0, self.bins - 1, out=idx)

    @property
    def edges_(self) -> np.ndarray:
        """Bin edges, shape ``(bins + 1,)``."""
        return np.linspace(self.lo_, self.hi_, self.bins + 1)

    def cdf(self, values) -> np.ndarray:
        """Fraction of observed values ``<= values`` (linear inside a bin)."""
        self._require_data()
        cum = np.concatenate([[0], np.cumsum(self.counts_)]) / self.n_seen_
        return np.interp(values, self.edges_, cum)

    def quantile(self, q) -> np.ndarray:
        """Value below which a fraction ``q`` of the data lies, clamped to the observed min/max."""
        self._require_data()
        cum = np.concatenate([[0], np.cumsum(self.counts_)]) / self.n_seen_
        return np.clip(np.interp(q, cum, self.edges_), self.min_, self.max_)


class MinMaxObserver(_Observer):
    """Range = running min and max of everything observed (no parameters).

    Examples
    --------
    >>> MinMaxObserver().observe(np.array([1.0, -2.0])).observe(np.array([3.0])).range_()
    (-2.0, 3.0)
    """

    min_: float
    max_: float

    def observe(self, x) -> MinMaxObserver:
        """Update the running min/max with one batch; returns ``self``."""
        x, lo, hi = _batch(x, self)
        if x.size:
            n = getattr(self, "n_seen_", 0)
            self.min_, self.max_ = (lo, hi) if n == 0 else (min(self.min_, lo), max(self.max_, hi))
            self.n_seen_ = n + x.size
        return self

    def range_(self) -> tuple[float, float]:
        """The observed ``(min, max)``."""
        self._require_data()
        return float(self.min_), float(self.max_)


class MovingAverageMinMaxObserver(_Observer):
    """Range = exponential moving average of per-batch min and max.

    Parameters
    ----------
    momentum : float, default=0.9
        Weight of the past: ``r = momentum * r + (1 - momentum) * batch``; the first batch sets ``r``.

    Examples
    --------
    >>> obs = MovingAverageMinMaxObserver(momentum=0.5)
    >>> obs.observe(np.array([0.0, 2.0])).observe(np.array([0.0, 4.0])).range_()
    (0.0, 3.0)
    """

    min_: float
    max_: float

    def __init__(self, *, momentum: float = 0.9):
        self.momentum = momentum

    def observe(self, x) -> MovingAverageMinMaxObserver:
        """Fold one batch's min/max into the moving averages; returns ``self``."""
        if not isinstance(self.momentum, (int, float)) or not 0.0 <= self.momentum < 1.0:
            raise PressoError(
                "The 'momentum' option of MovingAverageMinMaxObserver must be a float in "
                f"[0, 1). Got {self.momentum!r} instead."
            )
        x, lo, hi = _batch(x, self)
        if x.size:
            n, m = getattr(self, "n_seen_", 0), self.momentum
            self.min_, self.max_ = (
                (lo, hi) if n == 0 else (m * self.min_ + (1 - m) * lo, m * self.max_ + (1 - m) * hi)
            )
            self.n_seen_ = n + x.size
        return self

    range_ = MinMaxObserver.range_


class _HistogramObserver(_Observer):
    """Observers that read their range off a :class:`StreamingHistogram` ``hist_``."""

    bits: int  # PercentileObserver has none (``observe`` checks with hasattr)
    bins: int
    hist_: StreamingHistogram
    min_: float

    def __init__(self, *, bits: int = 8, bins: int = 2048):
        self.bits = bits
        self.bins = bins

    def _transform(self, x):
        return x

    def observe(self, x):
        """Add one batch to the histogram; returns ``self``."""
        if hasattr(self, "bits"):
            _check_bits(self.bits, self)
        if not hasattr(self, "hist_"):
            self.hist_ = StreamingHistogram(bins=self.bins)
        x, lo, _ = _batch(x, self)
        if x.size:
            self.hist_.observe(self._transform(x))
            self.min_ = lo if not hasattr(self, "min_") else min(self.min_, lo)
        self.n_seen_ = getattr(self.hist_, "n_seen_", 0)
        return self


class PercentileObserver(_HistogramObserver):
    """Range = the ``100 - percentile`` and ``percentile`` quantiles of the observed values.

    Parameters
    ----------
    percentile : float, default=99.99
        Upper percentile in (50, 100]; 100 gives min-max.
    bins : int, default=2048
        Histogram bins (quantile error <= one bin width, see module notes).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=100_000)
    >>> lo, hi = PercentileObserver(percentile=99.0).observe(x).range_()
    >>> round(hi, 1)
    2.3
    """

    def __init__(self, *, percentile: float = 99.99, bins: int = 2048):
        self.percentile = percentile
        self.bins = bins

    def range_(self) -> tuple[float, float]:
        """Two-sided quantiles read off the histogram (error <= one bin width)."""
        if not isinstance(self.percentile, (int, float)) or not 50.0 < self.percentile <= 100.0:
            raise PressoError(
                "The 'percentile' option of PercentileObserver must be a number in "
                f"(50, 100]. Got {self.percentile!r} instead."
            )
        self._require_data()
        q = self.percentile / 100.0
        lo, hi = self.hist_.quantile([1.0 - q, q])
        return float(lo), float(hi)


class MSEObserver(_HistogramObserver):
    """Range minimising the expected quantization MSE of the observed distribution.

    Candidates are ``alpha * (min(min_, 0), max(max_, 0))`` for 512 values of ``alpha`` in
    (0, 1]; a value inside the range costs ``step**2 / 12`` (rounding noise), one outside
    costs its squared distance to the clipped edge, with ``step = width / (2**bits - 1)``.

    Parameters
    ----------
    bits : int, default=8
        Bit width of the uniform quantizer the range is for, in [2, 16].
    bins : int, default=2048
        Histogram bins.

    Examples
    --------
    >>> x = np.random.default_rng(0).laplace(size=100_000)
    >>> lo, hi = MSEObserver(bits=4).observe(x).range_()
    >>> bool(hi < x.max() / 2)
    True
    """

    def range_(self) -> tuple[float, float]:
        """The MSE-optimal clipping range."""
        self._require_data()
        h = self.hist_
        centres = 0.5 * (h.edges_[:-1] + h.edges_[1:])  # (B,)
        alpha = np.linspace(1.0, 0.0, 512, endpoint=False)[:, None]  # (C, 1), first = no clipping
        lo, hi = alpha * min(h.min_, 0.0), alpha * max(h.max_, 0.0)  # (C, 1)
        step = (hi - lo) / (2**self.bits - 1)
        d2 = (centres - np.clip(centres, lo, hi)) ** 2  # (C, B)
        err = (h.counts_ * np.where(d2 > 0, d2, step**2 / 12)).sum(axis=1)  # (C,)
        best = int(np.argmin(err))
        return float(lo[best, 0]), float(hi[best, 0])


class EntropyObserver(_HistogramObserver):
    """TensorRT-style entropy calibration: the threshold minimising KL(P || Q) over a histogram of ``|x|``.

    For each candidate threshold ``t`` (a bin edge) ``P`` is the histogram below ``t`` with
    the tail folded into its last bin and ``Q`` is that histogram merged into ``2**(bits-1)``
    levels (``2**bits`` when all data is >= 0) and expanded back over the non-empty bins.
    The range is ``(-t, t)``, or ``(0, t)`` for non-negative data. As in TensorRT, ``t`` is at
    least ``levels`` bins, i.e. ``levels / bins * max|x|``.

    Parameters
    ----------
    bits : int, default=8
        Bit width of the quantizer, in [2, 16].
    bins : int, default=2048
        Histogram bins over ``[0, max|x|]`` (2048 as in TensorRT).

    Examples
    --------
    >>> x = np.concatenate([np.random.default_rng(0).normal(size=100_000), [-80.0, 80.0]])
    >>> lo, hi = EntropyObserver().observe(x).range_()
    >>> bool(lo == -hi and hi < 10)
    True
    """

    def _transform(self, x):
        return np.abs(x)

    def range_(self) -> tuple[float, float]:
        """The KL-optimal symmetric (or non-negative) range."""
        self._require_data()
        h = self.hist_
        counts, edges = h.counts_.astype(np.float64), h.edges_
        levels = 2**self.bits if self.min_ >= 0 else 2 ** (self.bits - 1)
        last = int(np.flatnonzero(counts)[-1]) + 1  # bins past the max hold nothing
        best, best_kl = last, math.inf
        for i in range(min(levels, last), last + 1):
            p = counts[:i].copy()
            p[-1] += counts[i:].sum()
            starts = (np.arange(min(levels, i)) * i) // min(levels, i)  # chunk starts, (L,)
            nonzero = (counts[:i] > 0).astype(np.float64)
            sums, nnz = np.add.reduceat(counts[:i], starts), np.add.reduceat(nonzero, starts)
            per = np.divide(sums, nnz, out=np.zeros_like(sums), where=nnz > 0)
            q = np.repeat(per, np.diff(np.append(starts, i))) * nonzero  # (i,)
            kl = _kl(p, q)
            if kl < best_kl:
                best, best_kl = i, kl
        t = float(edges[best])
        return (0.0, t) if self.min_ >= 0 else (-t, t)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) after normalising and moving ``eps`` of mass onto empty bins (as TensorRT/ORT do)."""
    out = []
    for d in (p / p.sum(), q / max(q.sum(), 1e-300)):
        zero = d == 0
        n_zero, n_nonzero = int(zero.sum()), int(d.size - zero.sum())
        if n_nonzero == 0:
            return math.inf
        out.append(d + eps * zero - (eps * n_zero / n_nonzero) * ~zero)
    p, q = out
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-300))))


OBSERVERS: dict[str, Callable[..., RangeObserver]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, **kw) -> RangeObserver:
    """Build an observer by name; ``kw`` go to its constructor.

    Examples
    --------
    >>> make_observer("percentile", percentile=99.9)
    PercentileObserver(percentile=99.9, bins=2048)
    """
    if name not in OBSERVERS:
        raise PressoError(f"Unknown observer {name!r}. Choose one of: {', '.join(OBSERVERS)}.")
    try:
        return OBSERVERS[name](**kw)
    except TypeError as err:
        raise PressoError(f"Observer {name!r} does not take these options: {sorted(kw)} ({err}).") from None
