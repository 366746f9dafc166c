"""Calibration observers: ranges match numpy, histogram memory stays O(bins), clipping beats min-max."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose

from presso.errors import PressoError
from presso.techniques.quantization.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    StreamingHistogram,
    make_observer,
)


def fake_quant(x, lo, hi, bits):
    """Asymmetric uniform quantize-dequantize over [lo, hi] (widened to contain 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2**bits - 1)
    zp = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zp, 0, 2**bits - 1)
    return (q - zp) * scale


def qmse(x, rng, bits):
    return float(np.mean((fake_quant(x, *rng, bits) - x) ** 2))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_minmax_matches_numpy_over_many_batches(rng):
    batches = [rng.normal(loc=i % 7 - 3, scale=1 + i % 5, size=(8, 33)) for i in range(200)]
    obs = MinMaxObserver()
    for b in batches:
        obs.observe(b)
    allx = np.concatenate([b.ravel() for b in batches])
    assert obs.range_() == (allx.min(), allx.max())
    assert obs.n_seen_ == allx.size


def test_moving_average_matches_hand_computed_ema():
    obs = MovingAverageMinMaxObserver(momentum=0.9)
    for b in ([-1.0, 2.0], [-3.0, 0.5, 4.0], [0.0, 10.0]):
        obs.observe(np.array(b))
    # min: -1 -> 0.9*-1 + 0.1*-3 = -1.2 -> 0.9*-1.2 + 0.1*0 = -1.08
    # max:  2 -> 0.9*2 + 0.1*4 = 2.2   -> 0.9*2.2 + 0.1*10 = 2.98
    assert_allclose(obs.range_(), (-1.08, 2.98), rtol=1e-12)
    assert obs.n_seen_ == 7


def test_percentile_streamed_matches_numpy(rng):
    x = rng.normal(size=1_000_000)
    obs = PercentileObserver(percentile=99.99)
    for b in np.array_split(x, 100):
        obs.observe(b)
    assert_allclose(obs.range_(), np.percentile(x, [0.01, 99.99]), rtol=0.01)
    assert obs.n_seen_ == x.size


def test_histogram_memory_does_not_grow_with_batches(rng):
    obs = PercentileObserver()
    obs.observe(rng.normal(size=1000))
    nbytes = obs.hist_.counts_.nbytes
    for i in range(1000):  # scale creeps up, so the range grows several times
        obs.observe(rng.normal(scale=1 + i / 50, size=1000))
    assert obs.hist_.counts_.shape == (2048,)
    assert obs.hist_.counts_.nbytes == nbytes == 2048 * 8
    assert obs.hist_.counts_.sum() == obs.n_seen_ == 1_001_000


def test_growth_keeps_counts_and_equals_direct_binning(rng):
    # Ranges jump by factors 100 and 10 both ways, shift off-centre, then shrink.
    parts = [
        rng.normal(scale=s, loc=c, size=20_000) for s, c in [(0.01, 0), (1, 0), (5, 3), (50, -20), (0.1, 0)]
    ]
    h = StreamingHistogram(bins=2048)
    for p in parts:
        h.observe(p)
    allx = np.concatenate(parts)
    assert h.counts_.sum() == h.n_seen_ == allx.size
    assert (h.min_, h.max_) == (allx.min(), allx.max())
    assert h.lo_ <= allx.min() and h.hi_ >= allx.max()
    # Merging whole bins only: identical to binning every value straight into the final grid.
    direct = np.histogram(allx, bins=h.edges_)[0]
    assert np.abs(direct - h.counts_).sum() <= 2  # float ties at an edge at most
    # The range is at most ~2x the span it has to cover (bound stated in the module notes).
    assert h.hi_ - h.lo_ <= 2.01 * (allx.max() - allx.min())


def test_growth_cdf_error_is_within_one_bin_of_mass(rng):
    parts = [rng.normal(scale=s, size=50_000) for s in (0.5, 1.0, 3.0, 1.0)]
    h = StreamingHistogram(bins=2048)
    for p in parts:
        h.observe(p)
    x = np.sort(np.concatenate(parts))
    empirical = np.arange(1, x.size + 1) / x.size
    err = np.abs(h.cdf(x) - empirical).max()
    # Bound: CDF exact at edges, linear inside a bin -> error <= the largest bin's mass.
    assert err <= h.counts_.max() / h.n_seen_ + 1e-12
    assert err < 1e-3  # here the largest bin holds ~0.4% of the mass; linear interpolation does better
    # Quantiles are within one bin width.
    width = (h.hi_ - h.lo_) / 2048
    assert_allclose(h.quantile([0.001, 0.5, 0.999]), np.quantile(x, [0.001, 0.5, 0.999]), atol=width)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_growth_keeps_an_edge_at_zero_for_one_signed_data(rng, sign):
    h = StreamingHistogram(bins=64)
    for scale in (1, 3, 10, 100):
        h.observe(sign * np.abs(rng.normal(scale=scale, size=1000)))
    assert (h.lo_ if sign > 0 else h.hi_) == 0.0  # no bins wasted on the empty side
    assert h.hi_ - h.lo_ <= 2.01 * (h.max_ - h.min_)


def test_histogram_starting_with_zeros_refits_range():
    h = StreamingHistogram(bins=64).observe(np.zeros(100)).observe(np.linspace(1e-6, 2e-6, 50))
    assert h.hi_ < 1e-5  # resolution taken from the first non-zero batch, not a placeholder
    assert h.counts_[0] >= 100 and h.counts_.sum() == 150


@pytest.mark.parametrize("dist", ["laplace", "normal"])
def test_mse_observer_beats_minmax(rng, dist):
    x = rng.laplace(size=200_000) if dist == "laplace" else rng.standard_t(4, size=200_000)
    minmax = (x.min(), x.max())
    for bits in (8, 4):
        chosen = make_observer("mse", bits=bits).observe(x).range_()
        assert qmse(x, chosen, bits) < qmse(x, minmax, bits)
    chosen4 = MSEObserver(bits=4).observe(x).range_()
    assert qmse(x, chosen4, 4) < 0.5 * qmse(x, minmax, 4)
    assert chosen4[1] < 0.6 * x.max() and chosen4[0] > 0.6 * x.min()  # clips well inside


def test_mse_observer_keeps_zero_lower_bound_for_relu_data(rng):
    x = np.maximum(rng.laplace(size=50_000), 0.0)
    lo, hi = MSEObserver(bits=4).observe(x).range_()
    assert lo == 0.0 and 0 < hi < x.max()


def test_entropy_observer_clips_outliers(rng):
    bulk = rng.normal(size=200_000)
    outliers = np.array([-60.0, 45.0, 70.0, -55.0] * 5)
    x = rng.permutation(np.concatenate([bulk, outliers]))
    obs = EntropyObserver(bits=8)
    for b in np.array_split(x, 20):
        obs.observe(b)
    lo, hi = obs.range_()
    assert lo == -hi  # signed data -> symmetric range
    assert 2.5 < hi < 10.0 < np.abs(x).max()
    # KL preserves the shape of the bulk: its quantization error is far lower than with min-max
    # (the 20 outliers, 0.01% of the data, are clipped; that is the method's trade-off).
    kl_mse = qmse(bulk, (lo, hi), 8)
    minmax_mse = qmse(bulk, (x.min(), x.max()), 8)
    assert kl_mse < 0.1 * minmax_mse


def test_entropy_observer_nonnegative_data_gives_zero_lower_bound(rng):
    x = np.concatenate([np.abs(rng.normal(size=100_000)), [50.0]])
    lo, hi = EntropyObserver().observe(x).range_()
    assert lo == 0.0 and hi < 10.0


def test_streaming_bert_size_calibration_keeps_memory_bounded(rng):
    # 200 batches x 1e6 float32 (800 MB if kept) through one observer, with growing scale.
    base = [rng.standard_normal(1_000_000, dtype=np.float32) for _ in range(4)]
    scales = [np.float32(1 + i // 50) for i in range(200)]
    obs = PercentileObserver(percentile=99.9)
    obs.observe(base[0])
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i, s in enumerate(scales):
            batch = base[i % 4] * s
            obs.observe(batch)
            del batch
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 1_000_000  # nothing retained across 2e8 values (keeping them: 800 MB)
    assert base[0].nbytes <= peak - start < 6 * base[0].nbytes  # tracked; temporaries ~ one batch
    assert obs.n_seen_ == 201_000_000 and obs.hist_.counts_.sum() == obs.n_seen_


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_range_before_data_raises(name):
    with pytest.raises(PressoError, match="has seen no data yet"):
        make_observer(name).range_()
    with pytest.raises(PressoError, match="has seen no data yet"):
        make_observer(name).observe(np.array([])).range_()


@pytest.mark.parametrize("name", sorted(OBSERVERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(name, bad):
    obs = make_observer(name).observe(np.ones(4))
    with pytest.raises(PressoError, match="1 NaN or infinite values out of 3"):
        obs.observe(np.array([0.0, bad, 1.0]))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(
        PressoError,
        match="Unknown observer 'foo'. Choose one of: minmax, moving_average, percentile, mse, entropy",
    ):
        make_observer("foo")


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("mse", {"bits": 1}, "'bits' option of MSEObserver must be an int in \\[2, 16\\]. Got 1"),
        ("entropy", {"bits": 8.0}, "'bits' option of EntropyObserver"),
        ("moving_average", {"momentum": 1.5}, "'momentum' option .* \\[0, 1\\). Got 1.5"),
        ("percentile", {"percentile": 120}, "'percentile' option .* \\(50, 100\\]. Got 120"),
        ("percentile", {"bins": 3}, "'bins' option of StreamingHistogram must be an int >= 16"),
    ],
)
def test_bad_options_raise_when_used(name, kw, match):
    obs = make_observer(name, **kw)  # construction only stores parameters
    with pytest.raises(PressoError, match=match):
        obs.observe(np.ones(4)).range_()


def test_make_observer_rejects_unknown_option():
    with pytest.raises(PressoError, match="does not take these options: \\['bitz'\\]"):
        make_observer("minmax", bitz=4)
