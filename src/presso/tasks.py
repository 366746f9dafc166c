"""Task types, their metrics, and how a quality budget reads each metric.

The budget (``max_drop``) is measured on the held-out evaluation rows against the fp32
baseline measured in the same run, on the task's primary metric (or the one ``--metric``
names). What a "drop" is depends on the metric, because a budget should mean what a user
means by "at most 1% worse":

- scores in [0, 1] where higher is better (accuracy, ROC-AUC, NDCG, R², cosine): the
  *absolute* drop, baseline minus compressed (0.01 = one point);
- errors in the data's own units (MAE, RMSE, MAPE): the *relative* increase,
  (compressed - baseline) / baseline (0.01 = 1% more error). An absolute drop of R² hides
  this: an LSTM forecaster whose R² moved 0.9972 -> 0.9933 passed a 0.01 budget while its
  MAE rose 51%.

:func:`drop` is the one function that computes it; every budget check calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from presso.errors import PressoError


@dataclass(frozen=True)
class MetricSpec:
    """How the budget reads a metric: its direction and whether a drop is relative."""

    higher_is_better: bool
    relative: bool  # the budget is the relative change against the baseline, not the absolute

    @property
    def kind(self) -> str:
        return "relative" if self.relative else "absolute"


_SCORE = MetricSpec(higher_is_better=True, relative=False)
_ERROR = MetricSpec(higher_is_better=False, relative=True)

# Every metric the tasks report. A name not listed here (a plugin's) is read as a score.
METRICS: dict[str, MetricSpec] = {
    **dict.fromkeys(
        (
            "accuracy",
            "balanced_accuracy",
            "top3_accuracy",
            "f1",
            "f1_macro",
            "roc_auc",
            "average_precision",
            "agreement",
            "r2",
            "r2_to_original",
            "mean_cosine",
            "min_cosine",
            "top10_agreement",
            "ndcg@10",
            "mrr",
            "map",
        ),
        _SCORE,
    ),
    "mae": _ERROR,
    "rmse": _ERROR,
    "mape": _ERROR,
    # The baseline's own max_abs_diff to the original is about 0, so a relative change of it
    # means nothing: its change is absolute, in the outputs' units.
    "max_abs_diff": MetricSpec(higher_is_better=False, relative=False),
}


def metric_spec(name: str) -> MetricSpec:
    return METRICS.get(name, _SCORE)


def drop(metric: str, baseline: float, value: float) -> float:
    """How much worse ``value`` is than ``baseline`` on ``metric``, in the budget's terms:
    the absolute drop of a score, the relative increase of an error. Negative: better.

    A relative drop from a baseline of 0 (a perfect model) is 0 when the value stays 0
    and infinite otherwise: no relative budget allows error where there was none.

    >>> round(drop("accuracy", 0.95, 0.94), 6)  # one point of accuracy
    0.01
    >>> round(drop("mae", 2.0, 2.1), 6)  # 5% more error
    0.05
    """
    spec = metric_spec(metric)
    worse = baseline - value if spec.higher_is_better else value - baseline
    if not spec.relative:
        return worse
    if baseline == 0:
        return 0.0 if worse <= 0 else math.inf
    return worse / abs(baseline)


def budget_words(metric: str) -> str:
    """'accuracy drop' / 'mae relative increase': what --max-drop bounds, in words."""
    spec = metric_spec(metric)
    if spec.higher_is_better:
        return f"{metric} relative drop" if spec.relative else f"{metric} drop"
    return f"{metric} relative increase" if spec.relative else f"{metric} increase"


def change(metric: str, baseline: float, value: float) -> tuple[float, float | None]:
    """(absolute, relative) change of any metric, compressed minus baseline. The relative
    one is None where the baseline is 0, and for an error against the original model
    (max_abs_diff), whose baseline is only the export's rounding."""
    delta = value - baseline
    spec = metric_spec(metric)
    if baseline == 0 or (not spec.higher_is_better and not spec.relative):
        return delta, None
    return delta, delta / abs(baseline)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    primary: str  # primary metric when labels are available
    primary_without_labels: str  # primary metric computed against the original model
    default_max_drop: float
    description: str
    budget_note: str  # why this primary metric, for the docs and --help


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        "classification",
        "accuracy",
        "agreement",
        0.01,
        "logits or probabilities (N, classes); labels are class indices",
        "accuracy, or balanced accuracy when the smallest class has under half of an even "
        "share (accuracy hides a minority class's losses); absolute drop",
    ),
    "regression": TaskSpec(
        "regression",
        "mae",
        "r2_to_original",
        0.01,
        "real-valued outputs (N,) or (N, k); MAE, RMSE, MAPE and R^2 on the targets",
        "MAE, relative increase (0.01 = 1% more error); without targets, R^2 to the "
        "original's outputs, absolute drop",
    ),
    "forecast": TaskSpec(
        "forecast",
        "mae",
        "r2_to_original",
        0.01,
        "future values from a window of past values; MAE, RMSE, MAPE and R^2 on the targets",
        "MAE, relative increase (0.01 = 1% more error); without targets, R^2 to the "
        "original's outputs, absolute drop",
    ),
    "anomaly": TaskSpec(
        "anomaly",
        "roc_auc",
        "r2_to_original",
        0.01,
        "an anomaly score per row (N,), or a reconstruction of the input whose squared "
        "error is the score; labels are 1 for anomalies",
        "ROC-AUC, absolute drop (it does not depend on the share of anomalies)",
    ),
    "embedding": TaskSpec(
        "embedding",
        "mean_cosine",
        "mean_cosine",
        0.01,
        "an embedding per row (N, dim); fidelity is the cosine to the original model's",
        "mean cosine to the original's embeddings, absolute drop",
    ),
    "ranking": TaskSpec(
        "ranking",
        "ndcg@10",
        "ndcg@10",
        0.01,
        "one score per row (N,) or (N, 1); rows are grouped by query (--group) and labels "
        "are graded relevance",
        "NDCG@10 averaged over groups, absolute drop",
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise PressoError(f"Unknown task '{name}'. Choose one of: {', '.join(TASKS)}.") from None


# Classification switches to balanced accuracy when the smallest class's share of the rows
# is below this fraction of an even share (1/k): e.g. under 25% of two classes, 5% of ten.
IMBALANCE = 0.5


def imbalanced(labels: Iterable[int], n_classes: int) -> bool:
    """Whether the smallest class (of ``n_classes``, absent ones counting 0) has under
    ``IMBALANCE`` of an even share of the rows."""
    counts = [0] * n_classes
    total = 0
    for y in labels:
        counts[int(y)] += 1
        total += 1
    return total > 0 and min(counts) / total < IMBALANCE / n_classes


def primary_metric(
    task: str,
    has_labels: bool,
    *,
    metric: str | None = None,
    available: Iterable[str] | None = None,
    labels: Iterable[int] | None = None,
    n_classes: int | None = None,
) -> str:
    """The metric the budget applies to: ``metric`` when the user chose one (it must be
    among ``available``, the metrics the task reports on this data), else the task's
    default (balanced accuracy for a classifier whose ``labels`` are imbalanced)."""
    spec = get_task(task)
    if metric is not None:
        if available is not None and metric not in set(available):
            choices = ", ".join(sorted(available))
            raise PressoError(
                f"--metric {metric} is not a metric of the {task} task on this data. Choose one of: {choices}."
            )
        return metric
    if not has_labels:
        return spec.primary_without_labels
    if task == "classification" and labels is not None and n_classes and imbalanced(labels, n_classes):
        return "balanced_accuracy"
    return spec.primary
