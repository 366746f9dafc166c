"""Task types, their primary metrics and default quality budgets.

The budget (``max_drop``) is always an *absolute* drop of the task's primary metric,
measured on the held-out evaluation split against the fp32 baseline measured in the
same run. Every primary metric is "higher is better" and unit-free so one default
fits all models of a task.
"""

from __future__ import annotations

from dataclasses import dataclass

from presso.errors import PressoError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    primary: str  # primary metric when labels are available
    primary_without_labels: str  # primary metric computed against the original model
    default_max_drop: float
    description: str


TASKS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        "classification",
        "accuracy",
        "agreement",
        0.01,
        "logits or probabilities (N, classes); labels are class indices",
    ),
    "regression": TaskSpec(
        "regression",
        "r2",
        "r2_to_original",
        0.01,
        "real-valued outputs (N,) or (N, k); R^2 on the targets",
    ),
    "forecast": TaskSpec(
        "forecast",
        "r2",
        "r2_to_original",
        0.01,
        "future values from a window of past values; R^2 on the targets",
    ),
    "anomaly": TaskSpec(
        "anomaly",
        "roc_auc",
        "r2_to_original",
        0.01,
        "an anomaly score per row (N,), or a reconstruction of the input whose squared "
        "error is the score; labels are 1 for anomalies",
    ),
    "embedding": TaskSpec(
        "embedding",
        "mean_cosine",
        "mean_cosine",
        0.01,
        "an embedding per row (N, dim); fidelity is the cosine to the original model's",
    ),
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise PressoError(f"Unknown task '{name}'. Choose one of: {', '.join(TASKS)}.") from None


def primary_metric(task: str, has_labels: bool) -> str:
    spec = get_task(task)
    return spec.primary if has_labels else spec.primary_without_labels
