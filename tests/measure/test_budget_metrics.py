"""The budget's drop per metric, the default metric per task, and the ranking metrics,
against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from presso.data.dataset import Dataset, split
from presso.errors import PressoError
from presso.measure.metrics import evaluate, reciprocal_rank
from presso.tasks import TASKS, change, drop, imbalanced, primary_metric


@pytest.mark.parametrize(
    ("metric", "baseline", "value", "expected"),
    [
        ("accuracy", 0.95, 0.94, 0.01),  # a score: absolute drop
        ("ndcg@10", 0.90, 0.92, -0.02),  # better is negative
        ("r2", 0.9972, 0.9933, 0.0039),  # the reported LSTM: R² barely moves ...
        ("mae", 0.100, 0.151, 0.51),  # ... while its MAE rises 51%: relative increase
        ("rmse", 2.0, 1.9, -0.05),
        ("mape", 0.04, 0.0404, 0.01),
        ("max_abs_diff", 0.0, 0.02, 0.02),  # an error against the original: absolute increase
    ],
)
def test_drop_reads_each_metric_in_its_own_terms(metric, baseline, value, expected):
    assert drop(metric, baseline, value) == pytest.approx(expected, abs=1e-12)


def test_relative_drop_from_a_perfect_baseline():
    assert drop("mae", 0.0, 0.0) == 0.0
    assert drop("mae", 0.0, 1e-6) == math.inf  # no relative budget allows error where there was none


def test_change_is_absolute_and_relative():
    assert change("mae", 2.0, 2.5) == pytest.approx((0.5, 0.25))
    assert change("accuracy", 0.8, 0.78) == pytest.approx((-0.02, -0.025))
    assert change("max_abs_diff", 3e-7, 0.02)[1] is None  # the baseline is only export rounding


@pytest.mark.parametrize(
    ("task", "with_labels", "without"),
    [
        ("classification", "accuracy", "agreement"),
        ("regression", "mae", "r2_to_original"),
        ("forecast", "mae", "r2_to_original"),
        ("anomaly", "roc_auc", "r2_to_original"),
        ("embedding", "mean_cosine", "mean_cosine"),
        ("ranking", "ndcg@10", "ndcg@10"),
    ],
)
def test_default_metric_per_task(task, with_labels, without):
    assert primary_metric(task, True) == with_labels
    assert primary_metric(task, False) == without
    assert TASKS[task].default_max_drop == 0.01


def test_imbalanced_classes_switch_to_balanced_accuracy():
    # 2 classes: under 25% of rows in the smallest is imbalanced; 10 classes: under 5%.
    assert imbalanced([0] * 76 + [1] * 24, 2) and not imbalanced([0] * 75 + [1] * 25, 2)
    assert imbalanced([0] * 100 + [1] * 100 + [2] * 0, 3)  # a class absent from the rows
    assert primary_metric("classification", True, labels=[0] * 90 + [1] * 10, n_classes=2) == (
        "balanced_accuracy"
    )
    # The tabular example's breast-cancer rows (37% malignant) keep accuracy.
    y = load_breast_cancer().target
    assert primary_metric("classification", True, labels=y.tolist(), n_classes=2) == "accuracy"


def test_balanced_accuracy_shows_what_accuracy_hides():
    y = np.array([0] * 18 + [1] * 2)
    logits = np.zeros((20, 2), np.float32)
    logits[:, 0] = 1.0  # always the majority class
    m = evaluate("classification", logits, logits, y)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # recall 1 on class 0, 0 on class 1


def test_chosen_metric_is_validated_with_the_choices():
    assert primary_metric("forecast", True, metric="rmse", available=["mae", "rmse", "r2"]) == "rmse"
    with pytest.raises(
        PressoError, match=r"--metric ndcg@10 is not a metric of the forecast task.*mae, r2, rmse"
    ):
        primary_metric("forecast", True, metric="ndcg@10", available=["mae", "rmse", "r2"])


# --------------------------------------------------------------------------- ranking


def test_ranking_metrics_by_hand():
    groups = np.array([1, 1, 1, 2, 2, 2, 3, 3, 4])
    relevance = np.array([2, 0, 1, 0, 0, 1, 0, 0, 1.0])
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.2, 1.0, 0.0, 0.7])
    m = evaluate("ranking", scores, scores, relevance, None, groups)
    # Group 1: order rel 0, 1, 2. DCG = 1/log2(3) + 2/log2(4); ideal 2 + 1/log2(3).
    ndcg1 = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
    # Group 2: the relevant row ties the second at 0.2: scikit-learn averages the tied gains.
    ndcg2 = 0.5 * (1 / math.log2(3) + 1 / math.log2(4))
    # Group 3 has no relevant row and group 4 one row: left out (any model scores them alike).
    assert m["ndcg@10"] == pytest.approx((ndcg1 + ndcg2) / 2, abs=1e-12)
    # MRR: group 1's first relevant is 2nd; group 2's ties the non-relevant 0.2, counted against it: 3rd.
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2, abs=1e-12)
    # MAP (relevance > 0): group 1 AP = (1/2 + 2/3) / 2; group 2 at the tied threshold, 1/3.
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2, abs=1e-12)


def test_reciprocal_rank_ties_count_against_the_relevant_row():
    assert reciprocal_rank(np.array([0, 1.0]), np.array([0.5, 0.5])) == 0.5
    assert reciprocal_rank(np.array([0, 1.0]), np.array([0.4, 0.5])) == 1.0


def test_ranking_with_nothing_to_rank_says_so():
    with pytest.raises(PressoError, match="nothing to rank"):
        evaluate("ranking", np.ones(4), np.ones(4), np.zeros(4), None, np.array([1, 1, 2, 2]))


def test_split_keeps_whole_groups():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=40)  # groups of different sizes
    groups = np.repeat(np.arange(40) * 7, sizes)
    data = Dataset(
        {"x": np.arange(len(groups), dtype=np.float32)[:, None]}, target=np.ones(len(groups)), groups=groups
    )
    parts = split(data, 0.3, seed=3)
    cal, ev = set(parts.calibration.groups.tolist()), set(parts.evaluation.groups.tolist())
    assert not cal & ev and cal | ev == set(groups.tolist())
    for g in cal:  # every row of a calibration group went with it
        assert (parts.calibration.groups == g).sum() == (groups == g).sum()
    assert len(parts.calibration) >= 0.3 * len(groups) > len(parts.calibration) - sizes.max()
    assert parts.describe()["method"] == "seeded random permutation of whole groups"
    again = split(data, 0.3, seed=3)
    assert np.array_equal(again.calibration_index, parts.calibration_index)
    head = parts.evaluation.head(1)  # exactly one row (batch-1 timing), its group id with it
    assert len(head) == 1 and head.groups.tolist() == parts.evaluation.groups[:1].tolist()


def test_group_column_of_a_table(tmp_path):
    from presso.data.resolve import load_data

    path = tmp_path / "rank.csv"
    path.write_text("q,f1,f2,rel\n1,0.5,1,2\n1,0.1,0,0\n2,0.3,1,1\n2,0.2,0,0\n")
    data = load_data(path, ["x"], target="rel", group="q")
    assert data.groups.tolist() == [1, 1, 2, 2] and data.inputs["x"].shape == (4, 2)
    with pytest.raises(PressoError, match="Group column 'query' not found.*Columns: q, f1, f2"):
        load_data(path, ["x"], target="rel", group="query")


def test_prepare_picks_the_budget_metric_from_the_data():
    import torch

    from presso.recipe.run import prepare

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (np.arange(200) < 20).astype(np.int64)  # 10% positives: imbalanced
    prepared = prepare(model, (x, y), task="classification")
    try:
        assert prepared.run.primary == "balanced_accuracy"
    finally:
        prepared.close()
    with pytest.raises(
        PressoError, match=r"--metric mae is not a metric of the classification task.*accuracy"
    ):
        prepare(model, (x, y), task="classification", metric="mae")
    prepared = prepare(model, (x, y), task="classification", metric="f1")
    try:
        assert prepared.run.primary == "f1"
    finally:
        prepared.close()


def test_balanced_accuracy_resolution_is_the_smallest_class():
    from presso.measure.metrics import one_row_drop, unresolved_budget

    y = np.array([0] * 30 + [1] * 4)
    assert one_row_drop("balanced_accuracy", 34, y) == pytest.approx(1 / 8)  # 2 classes x 4 rows
    assert one_row_drop("balanced_accuracy", 34) is None  # without labels: unknown
    (line,) = unresolved_budget("balanced_accuracy", 0.01, {"held-out": 34}, {"held-out": y})
    assert line == (
        "with 4 held-out rows in the smallest class, one changed prediction there drops balanced_accuracy "
        "by 0.1250: --max-drop 0.01 allows none on them (give more rows of that class, --metric accuracy, "
        "or --max-drop 0.1250 or more)"
    )
    assert unresolved_budget("balanced_accuracy", 0.2, {"held-out": 34}, {"held-out": y}) == []


def test_a_ranking_table_is_prepared_by_whole_groups(tmp_path):
    import pandas as pd
    import torch

    from presso.recipe.run import prepare

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 2)).astype(np.float32), columns=["f1", "f2"])
    frame["rel"] = rng.integers(0, 3, size=40)
    frame["q"] = np.repeat(np.arange(10), 4)
    frame.to_csv(tmp_path / "rank.csv", index=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).eval()
    with pytest.raises(PressoError, match="Ranking needs graded relevance labels and the query id"):
        prepare(model, tmp_path / "rank.csv", task="ranking", target="rel")
    prepared = prepare(model, tmp_path / "rank.csv", task="ranking", target="rel", group="q")
    try:
        run = prepared.run
        assert run.primary == "ndcg@10"
        assert not set(run.calibration.groups.tolist()) & set(run.evaluation.groups.tolist())
        assert set(run.baseline_metrics()) == {"ndcg@10", "mrr", "map"}
    finally:
        prepared.close()


def test_budget_words_name_what_max_drop_bounds():
    from presso.tasks import budget_words

    assert [budget_words(m) for m in ("accuracy", "mae", "max_abs_diff")] == [
        "accuracy drop",
        "mae relative increase",
        "max_abs_diff increase",
    ]
