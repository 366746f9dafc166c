"""Data files larger than the memory budget: streamed, a seeded uniform sample kept.

The sample's statistics are checked against the definition (every row equally likely,
whole groups, file order, the seed decides), the streamed readers against the in-memory
ones on files that fit, and the bounded memory in tests/robustness/test_resource_bounds.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hf_tiny import tiny_tokenizer

from presso.data import streamed
from presso.data.resolve import load_data
from presso.data.sample import RowSample, parse_bytes
from presso.errors import PressoError


def _sample(n: int, capacity: int, seed: int, chunk: int, groups=None) -> dict:
    sample = RowSample(capacity, seed)
    for start in range(0, n, chunk):
        rows = {"i": np.arange(start, min(n, start + chunk))}
        sample.add(rows, None if groups is None else groups[start : start + chunk])
    return sample.result()


def test_every_row_is_equally_likely_and_the_sample_is_in_file_order():
    n, k = 1000, 100
    hits = np.zeros(n)
    for seed in range(400):
        kept = _sample(n, k, seed, chunk=37)["i"]
        assert len(kept) == k and len(set(kept)) == k
        assert (np.diff(kept) > 0).all()  # file order
        hits[kept] += 1
    # each row kept with probability k/n = 0.1: 40 expected of 400, binomial sd 6
    assert abs(hits.mean() - 40) < 1e-9
    assert hits.min() > 40 - 5 * 6 and hits.max() < 40 + 5 * 6
    # the first and last tenth of the file are kept alike (no bias to early or late rows)
    assert abs(hits[:100].mean() - hits[-100:].mean()) < 4


def test_the_seed_decides_the_sample_not_the_chunk_size():
    a = _sample(5000, 300, seed=7, chunk=64)["i"]
    b = _sample(5000, 300, seed=7, chunk=64)["i"]
    c = _sample(5000, 300, seed=8, chunk=64)["i"]
    np.testing.assert_array_equal(a, b)
    assert len(np.intersect1d(a, c)) < 100  # another seed, another sample (~18 shared by chance)


def test_a_file_that_fits_comes_back_whole():
    np.testing.assert_array_equal(_sample(250, 250, seed=0, chunk=16)["i"], np.arange(250))


def test_groups_are_kept_or_dropped_whole():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), rng.integers(1, 9, size=300))
    kept = _sample(len(groups), 200, seed=3, chunk=50, groups=groups)["i"]
    assert 150 <= len(kept) <= 200
    kept_groups = np.unique(groups[kept])
    np.testing.assert_array_equal(np.sort(kept), np.flatnonzero(np.isin(groups, kept_groups)))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MB", 512 * 10**6),
        ("2GB", 2 * 10**9),
        ("1.5G", 1_500_000_000),
        ("64MiB", 64 * 2**20),
        ("800000", 800000),
    ],
)
def test_sizes_parse(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1GB", "0", "nan", "1XB"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(PressoError, match="not a size"):
        parse_bytes(text)


# ------------------------------------------------------------------ the readers


def _table(n: int, groups: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(n, 6)).astype(np.float32), columns=[f"f{j}" for j in range(6)])
    frame["label"] = rng.integers(0, 3, size=n)
    if groups:
        frame["query"] = np.repeat(np.arange(n // 5), 5)
    return frame


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 128 rows, so that a small file crosses many chunk boundaries."""
    monkeypatch.setattr(streamed, "_chunk_rows", lambda budget, row_bytes: 128)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_streamed_table_that_fits_equals_the_in_memory_read(suffix, tmp_path, small_chunks):
    path = tmp_path / f"rows{suffix}"
    frame = _table(2000, groups=True)
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    whole = load_data(path, ["x"], target="label", group="query")
    chunked = streamed.sampled_table(path, ["x"], "label", "query", budget=10**8, seed=0)
    assert whole.sample is None and chunked.sample is None  # nothing was dropped
    np.testing.assert_array_equal(chunked.inputs["x"], whole.inputs["x"])
    np.testing.assert_array_equal(chunked.target, whole.target)
    np.testing.assert_array_equal(chunked.groups, whole.groups)
    assert chunked.feature_names == whole.feature_names


def test_a_table_over_the_budget_is_a_seeded_sample_of_whole_groups(tmp_path):
    path = tmp_path / "rows.csv"
    frame = _table(20_000, groups=True)
    frame.to_csv(path, index=False)
    data = load_data(path, ["x"], target="label", group="query", memory_budget=300_000, seed=5)
    again = load_data(path, ["x"], target="label", group="query", memory_budget=300_000, seed=5)
    assert data.sample is not None and data.sample.rows_in_file == 20_000
    kept_bytes = data.inputs["x"].nbytes + data.target.nbytes + data.groups.nbytes
    assert kept_bytes <= 300_000 // streamed.SAMPLE_SHARE and len(data) > 500
    np.testing.assert_array_equal(data.inputs["x"], again.inputs["x"])
    # each kept row is the file's row, whole groups of 5
    full = frame.set_index("query", drop=False)
    for q in np.unique(data.groups)[:20]:
        np.testing.assert_allclose(data.inputs["x"][data.groups == q], full.loc[q].iloc[:, :6].to_numpy())
    assert (np.unique(data.groups, return_counts=True)[1] == 5).all()
    # a uniform sample: the label mix matches the file's
    np.testing.assert_allclose(
        np.bincount(data.target) / len(data), np.bincount(frame["label"]) / len(frame), atol=0.05
    )


@pytest.mark.parametrize("compressed", [False, True])
def test_a_streamed_npz_equals_the_in_memory_read_and_samples_when_over(compressed, tmp_path, small_chunks):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 4, 5))
    y = rng.integers(0, 2, size=3000)
    path = tmp_path / "rows.npz"
    (np.savez_compressed if compressed else np.savez)(path, X=x, y=y)
    whole = load_data(path, ["x"])
    fits = streamed.sampled_npz(path, ["x"], budget=10**8, seed=0)
    np.testing.assert_array_equal(fits.inputs["x"], whole.inputs["x"])
    np.testing.assert_array_equal(fits.target, whole.target)
    assert whole.inputs["x"].dtype == fits.inputs["x"].dtype == np.float32 and fits.sample is None
    small = load_data(path, ["x"], memory_budget=88_000, seed=1)
    assert small.sample is not None and len(small) == 88_000 // streamed.SAMPLE_SHARE // 88
    index = [
        int(np.flatnonzero((x.astype(np.float32) == row).all(axis=(1, 2)))[0]) for row in small.inputs["x"]
    ]
    assert index == sorted(index) and len(set(index)) == len(index)
    np.testing.assert_array_equal(small.target, y[index])


def test_a_streamed_npz_refuses_nan_rows_by_their_file_row(tmp_path):
    x = np.ones((5000, 3))
    x[4321, 1] = np.nan
    path = tmp_path / "rows.npz"
    np.savez(path, X=x)
    with pytest.raises(PressoError, match="first row 4321"):
        load_data(path, ["x"], memory_budget=20_000)


def test_a_truncated_npz_member_is_refused_in_one_line(tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=np.ones((4000, 8)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PressoError):
        load_data(path, ["x"], memory_budget=20_000)


def test_text_lines_are_sampled_before_tokenizing(tmp_path, small_chunks):
    tok = tiny_tokenizer("bert")
    path = tmp_path / "texts.txt"
    lines = [f"sentence number {i} about the weather" for i in range(5000)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    names = ["input_ids", "attention_mask"]
    whole = load_data(path, names, tokenizer=tok, seq_len=16)
    assert whole.texts == lines and whole.sample is None
    row_bytes = 2 * 16 * 8
    small = load_data(
        path, names, tokenizer=tok, seq_len=16, memory_budget=300 * row_bytes * streamed.SAMPLE_SHARE, seed=4
    )
    assert small.sample is not None and small.sample.rows_in_file == 5000 and len(small) == 300
    kept = [int(t.split()[2]) for t in small.texts]
    assert kept == sorted(kept)
    np.testing.assert_array_equal(small.inputs["input_ids"], whole.inputs["input_ids"][kept])
