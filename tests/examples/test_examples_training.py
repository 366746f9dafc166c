"""The built-in examples train to real quality, cache their weights and reload them."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from presso.examples import _cache
from presso.examples.registry import EXAMPLES

NAMES = ["digits", "tabular", "forecast", "anomaly", "ranking"]


def _build(name: str) -> tuple:
    """Build example ``name``; also return the progress messages it sent."""
    messages: list[str] = []
    example = importlib.import_module(EXAMPLES[name][0]).build(progress=messages.append)
    return example, messages


def _outputs(example) -> torch.Tensor:
    with torch.no_grad():
        return example.model(torch.from_numpy(example.data.inputs["x"]))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """This module's own PRESSO_CACHE_DIR, so "first build trains" holds whatever ran before."""
    return tmp_path_factory.mktemp("presso-cache")


@pytest.fixture
def cache_dir(cache_root, monkeypatch):
    # Set per test: it must win over any autouse fixture that points the cache elsewhere.
    monkeypatch.setenv(_cache.CACHE_ENV, str(cache_root))
    return cache_root / "examples"


@pytest.fixture(scope="module")
def built(cache_root):
    """Every example, trained once into the module's cache dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(_cache.CACHE_ENV, str(cache_root))
        return {name: _build(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_first_build_trains_and_caches(built, cache_dir, name):
    example, messages = built[name]
    assert messages == [f"training the {name} example model (first use only)"]
    assert example.training["from_cache"] is False
    assert (cache_dir / f"{name}-v1.pt").is_file()
    assert not list(cache_dir.glob("*.tmp"))
    assert not example.model.training
    assert example.name == name
    assert example.data.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("name", "min_rows", "min_accuracy"), [("digits", 700, 0.95), ("tabular", 200, 0.93)]
)
def test_classifiers_are_accurate_on_heldout_rows(built, name, min_rows, min_accuracy):
    example, _ = built[name]
    assert example.task == "classification"
    assert len(example.data) >= min_rows
    assert example.data.target.dtype == np.int64
    accuracy = float((_outputs(example).argmax(dim=1).numpy() == example.data.target).mean())
    assert accuracy >= min_accuracy
    assert accuracy == pytest.approx(example.training["heldout_accuracy"])


def test_forecast_is_accurate_without_leakage(built):
    from presso.examples import forecast

    example, _ = built["forecast"]
    x, y = example.data.inputs["x"], example.data.target
    assert example.task == "forecast"
    assert x.shape[1:] == (52,) and y.shape == (len(x), 1) and y.dtype == np.float32
    assert np.isfinite(x).all() and np.isfinite(y).all()
    pred = _outputs(example).numpy()
    assert pred.shape == y.shape
    mae = float(np.abs(pred - y).mean())
    assert mae < 1.5
    assert mae < float(np.abs(x[:, -1:] - y).mean())  # beats "same as last week"
    _, _, target_week, n_train, _ = forecast._windows()
    assert target_week[:n_train].max() < target_week[n_train:].min()
    assert len(target_week) - n_train == len(example.data)


def test_anomaly_scores_rank_malignant_rows_higher(built):
    example, _ = built["anomaly"]
    assert example.task == "anomaly"
    target = example.data.target
    assert target.dtype == np.int64 and set(np.unique(target)) == {0, 1}
    score = _outputs(example).numpy()
    assert score.shape == (len(example.data),)
    assert roc_auc_score(target, score) >= 0.85


@pytest.mark.parametrize("name", NAMES)
def test_second_build_loads_cache_with_identical_outputs(built, cache_dir, name):
    first, _ = built[name]
    rng_before = torch.get_rng_state()
    second, messages = _build(name)
    assert messages == []
    assert second.training["from_cache"] is True
    assert torch.equal(_outputs(first), _outputs(second))
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched


def test_corrupt_cache_file_is_retrained_to_the_same_weights(built, cache_dir):
    first, _ = built["tabular"]
    (cache_dir / "tabular-v1.pt").write_bytes(b"not a torch file")
    again, messages = _build("tabular")
    assert len(messages) == 1 and again.training["from_cache"] is False
    assert torch.equal(_outputs(first), _outputs(again))  # training is deterministic
    state, was_trained = _cache.cached_state_dict("tabular", 1, lambda: pytest.fail("retrained"))
    assert not was_trained and set(state) == set(again.model.state_dict())


def test_cached_state_dict_trains_once_and_saves_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    state, was_trained = _cache.cached_state_dict("toy", 2, train)
    assert was_trained and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["toy-v2.pt"]
    state, was_trained = _cache.cached_state_dict("toy", 2, train)
    assert not was_trained and len(calls) == 1
    torch.testing.assert_close(state["w"], torch.arange(3.0), rtol=0, atol=0)
    _, was_trained = _cache.cached_state_dict("toy", 3, train)  # new version, new file
    assert was_trained and len(calls) == 2


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_cached_state_dict_retrains_unreadable_files(tmp_path, monkeypatch, content):
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))
    path = tmp_path / "examples" / "toy-v1.pt"
    path.parent.mkdir()
    if content is None:  # a valid torch file that is not a state dict
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    state, was_trained = _cache.cached_state_dict("toy", 1, lambda: {"w": torch.ones(2)})
    assert was_trained and torch.equal(state["w"], torch.ones(2))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_train_supervised_is_deterministic():
    X, y = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)), torch.zeros(40)
    weights = []
    for _ in range(2):
        with _cache.seeded(0):
            model = torch.nn.Linear(3, 1)
        history = _cache.train_supervised(
            model, X, y[:, None], torch.nn.functional.mse_loss, epochs=5, lr=1e-2, batch_size=8, seed=3
        )
        assert len(history) == 5 and history[-1] < history[0]
        assert not model.training
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_ranker_orders_each_heldout_travellers_modes(built):
    from presso.examples import ranking
    from presso.measure.metrics import evaluate

    example, _ = built["ranking"]
    data = example.data
    assert example.task == "ranking" and len(data) == 84 * 4
    # Whole travellers only, each with its four modes and one chosen; none seen in training.
    ids, counts = np.unique(data.groups, return_counts=True)
    assert (counts == 4).all() and all(data.target[data.groups == g].sum() == 1 for g in ids)
    _, _, groups = ranking._rows()
    train_ids, heldout_ids = ranking._travellers(groups)
    assert set(ids.tolist()) == set(heldout_ids.tolist()) and not set(ids.tolist()) & set(train_ids.tolist())
    scores = _outputs(example).numpy()
    m = evaluate("ranking", scores, scores, data.target, None, data.groups)
    assert m == pytest.approx(example.training["heldout"])
    assert m["ndcg@10"] >= 0.9 and m["mrr"] >= 0.85
    # Better than ranking by the cheapest generalised cost alone (column gc).
    gc = data.inputs["x"][:, ranking.FEATURES.index("gc")]
    assert m["mrr"] > evaluate("ranking", -gc, -gc, data.target, None, data.groups)["mrr"] + 0.2
