"""Task metrics (scikit-learn) and fidelity to the original model's outputs.

One function, :func:`evaluate`, serves the baseline and every compressed variant, so
their numbers are computed by the same code on the same rows.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from presso.errors import PressoError

TOP_K = 3
RETRIEVAL_K = 10
RANKING_K = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (N, k), in their dtype."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def anomaly_scores(outputs: np.ndarray, inputs: dict[str, np.ndarray] | None) -> np.ndarray:
    """One score per row: the output itself, or the squared reconstruction error."""
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return outputs.reshape(-1)
    if inputs is not None and len(inputs) == 1:
        x = next(iter(inputs.values()))
        if x.shape == outputs.shape:
            return ((x - outputs) ** 2).reshape(len(x), -1).mean(axis=1)
    raise PressoError(
        f"An anomaly model must return one score per row (N,) or a reconstruction of its "
        f"input; it returned shape {outputs.shape}."
    )


def check_target(task: str, outputs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Validate labels against the model's outputs; returns them in the dtype metrics need."""
    if task == "classification":
        if outputs.ndim != 2 or outputs.shape[1] < 2:
            raise PressoError(
                f"A classifier must return scores of shape (N, classes); this one returns {outputs.shape}. "
                "Use --task regression for real-valued outputs."
            )
        y = np.asarray(target)
        if y.ndim != 1 or not np.all(np.mod(y, 1) == 0):
            raise PressoError("Classification labels must be one integer class index per row.")
        y = y.astype(np.int64)
        if y.min() < 0 or y.max() >= outputs.shape[1]:
            raise PressoError(
                f"Labels range over [{y.min()}, {y.max()}] but the model has {outputs.shape[1]} classes."
            )
        return y
    if task == "anomaly":
        y = np.asarray(target).reshape(-1)
        if set(np.unique(y).tolist()) - {0, 1}:
            raise PressoError("Anomaly labels must be 0 (normal) or 1 (anomaly).")
        return y.astype(np.int64)
    if task == "ranking":
        if outputs.size != len(outputs):
            raise PressoError(
                f"A ranking model must return one score per row (N,) or (N, 1); it returns {outputs.shape}."
            )
        y = np.asarray(target, dtype=np.float64).reshape(-1)
        if len(y) != len(outputs) or not np.all(np.isfinite(y)) or y.min() < 0:
            raise PressoError("Ranking labels must be one graded relevance >= 0 per row (0: not relevant).")
        return y
    if task in ("regression", "forecast"):
        y = np.asarray(target, dtype=np.float32)
        if y.size != outputs.size:
            raise PressoError(
                f"Targets have {y.size // len(y)} values per row but the model predicts "
                f"{outputs.size // len(outputs)}. Give targets shaped like the model's outputs."
            )
        return y.reshape(outputs.shape)
    return target


def _classification(out: np.ndarray, ref: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
    pred, ref_pred = out.argmax(1), ref.argmax(1)
    m = {"agreement": float(np.mean(pred == ref_pred))}
    if y is None:
        return m
    probs, n_classes = softmax(out), out.shape[1]
    m["accuracy"] = float(skm.accuracy_score(y, pred))
    # The mean of per-class recalls: what accuracy hides when one class dominates.
    with warnings.catch_warnings():  # it warns when a prediction names a class the labels lack
        warnings.simplefilter("ignore", UserWarning)
        m["balanced_accuracy"] = float(skm.balanced_accuracy_score(y, pred))
    if n_classes > TOP_K:
        m[f"top{TOP_K}_accuracy"] = float(
            skm.top_k_accuracy_score(y, probs, k=TOP_K, labels=np.arange(n_classes))
        )
    if n_classes == 2:
        m["f1"] = float(skm.f1_score(y, pred, zero_division=0))
        if len(np.unique(y)) == 2:
            m["roc_auc"] = float(skm.roc_auc_score(y, probs[:, 1]))
    else:
        m["f1_macro"] = float(skm.f1_score(y, pred, average="macro", zero_division=0))
        if len(np.unique(y)) == n_classes:  # one-vs-rest AUC needs every class present
            m["roc_auc"] = float(skm.roc_auc_score(y, probs, multi_class="ovr"))
    return m


def _regression(out: np.ndarray, ref: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
    m = {
        "r2_to_original": float(skm.r2_score(ref.reshape(len(ref), -1), out.reshape(len(out), -1))),
        "max_abs_diff": float(np.max(np.abs(out - ref))),
    }
    if y is None:
        return m
    o, t = out.reshape(len(out), -1), y.reshape(len(y), -1)
    m["mae"] = float(skm.mean_absolute_error(t, o))
    m["rmse"] = float(skm.root_mean_squared_error(t, o))
    m["mape"] = float(skm.mean_absolute_percentage_error(t, o))
    m["r2"] = float(skm.r2_score(t, o))
    return m


def _anomaly(
    out: np.ndarray, ref: np.ndarray, y: np.ndarray | None, inputs: dict[str, np.ndarray] | None
) -> dict[str, float]:
    s, s_ref = anomaly_scores(out, inputs), anomaly_scores(ref, inputs)
    m = {"r2_to_original": float(skm.r2_score(s_ref, s))}
    if y is None:
        return m
    m["roc_auc"] = float(skm.roc_auc_score(y, s))
    m["average_precision"] = float(skm.average_precision_score(y, s))
    return m


def ranked_groups(groups: np.ndarray, relevance: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group whose ranking can matter: at least two rows and one
    relevant (> 0). A group with no relevant row, or a single row, scores the same under
    any model, so it is left out of every ranking metric rather than counted as 0 or 1."""
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return [g for g in np.split(order, bounds) if len(g) > 1 and relevance[g].max() > 0]


def reciprocal_rank(relevance: np.ndarray, scores: np.ndarray) -> float:
    """1 / the rank of the first relevant row (relevance > 0) when rows are ordered by score.

    By hand: scikit-learn has no MRR. A tie counts against the relevant row: its rank
    counts every non-relevant row scored at least as high, so a model that collapses
    scores to ties (coarse quantization) cannot gain from them.
    """
    best = scores[relevance > 0].max()
    return 1.0 / (1 + int(np.sum((scores >= best) & (relevance <= 0))))


def _ranking(out: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> dict[str, float]:
    if y is None or groups is None:
        raise PressoError("Ranking needs relevance labels (--target) and query groups (--group COLUMN).")
    s = out.reshape(-1).astype(np.float64)
    kept = ranked_groups(groups, y)
    if not kept:
        raise PressoError(
            "No group has two or more rows with at least one relevant (> 0): nothing to rank. "
            "Check --group and the relevance labels."
        )
    # scikit-learn's ndcg_score averages the gains of tied scores (ignore_ties=False).
    ndcg = [skm.ndcg_score(y[g][None], s[g][None], k=RANKING_K) for g in kept]
    ap = [skm.average_precision_score(y[g] > 0, s[g]) for g in kept]
    rr = [reciprocal_rank(y[g], s[g]) for g in kept]
    return {
        f"ndcg@{RANKING_K}": float(np.mean(ndcg)),
        "mrr": float(np.mean(rr)),
        "map": float(np.mean(ap)),
    }


def top_k_agreement(a: np.ndarray, b: np.ndarray, k: int = RETRIEVAL_K) -> float:
    """Mean overlap of each row's k nearest neighbours (cosine) under two embeddings.

    Every row is a query over all the other rows: the retrieval a user of an
    embedding model actually runs.
    """
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0

    def neighbours(e: np.ndarray) -> np.ndarray:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k - 1, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb, strict=True)]))


def _embedding(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    o, r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    cos = 1.0 - skm.pairwise.paired_cosine_distances(o, r)
    return {
        "mean_cosine": float(np.mean(cos)),
        "min_cosine": float(np.min(cos)),
        f"top{RETRIEVAL_K}_agreement": top_k_agreement(o, r),
    }


def evaluate(
    task: str,
    outputs: np.ndarray,
    reference: np.ndarray,
    target: np.ndarray | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of ``task`` for ``outputs``, plus fidelity to ``reference`` outputs
    (``groups``: the query id of each row, for ranking)."""
    if task == "classification":
        return _classification(outputs, reference, target)
    if task in ("regression", "forecast"):
        return _regression(outputs, reference, target)
    if task == "anomaly":
        return _anomaly(outputs, reference, target, inputs)
    if task == "embedding":
        return _embedding(outputs, reference)
    if task == "ranking":
        return _ranking(outputs, target, groups)
    raise PressoError(f"Unknown task '{task}'.")


# Primary metrics that count rows: one changed row moves them by 1 / rows.
_COUNTED = {"accuracy": "prediction", "agreement": "prediction"}


def one_row_drop(metric: str, rows: int, labels: np.ndarray | None = None) -> float | None:
    """The drop of ``metric`` that one changed row makes on ``rows`` rows, for metrics that
    count rows (accuracy, agreement); None for continuous ones (R², ROC-AUC, cosine).
    Balanced accuracy (given the rows' ``labels``) moves most with a row of the smallest
    class: 1 / (classes x that class's rows)."""
    if metric == "balanced_accuracy":
        if labels is None or len(labels) == 0:
            return None
        _, counts = np.unique(labels, return_counts=True)
        return 1.0 / (len(counts) * int(counts.min()))
    return 1.0 / rows if metric in _COUNTED and rows > 0 else None


def unresolved_budget(
    metric: str, max_drop: float, rows: dict[str, int], labels: dict[str, np.ndarray | None] | None = None
) -> list[str]:
    """One sentence per part of the data (``{"held-out": 90, ...}``) whose rows are too few
    for ``max_drop``: one changed row already breaks it, so the budget allows no change at
    all there. Empty when every part resolves it (or the metric is continuous, or the
    budget is 0: no change is then what was asked for). ``labels`` (per part) resolve
    balanced accuracy."""
    out = []
    for part, n in rows.items():
        y = None if labels is None else labels.get(part)
        step = one_row_drop(metric, n, y)
        if step is None or max_drop <= 0 or step <= max_drop + 1e-12:
            continue
        if metric == "balanced_accuracy":
            assert y is not None  # one_row_drop returned a step
            smallest = int(np.unique(y, return_counts=True)[1].min())
            out.append(
                f"with {smallest} {part} rows in the smallest class, one changed prediction there drops "
                f"{metric} by {step:.4f}: --max-drop {max_drop:g} allows none on them (give more rows "
                f"of that class, --metric accuracy, or --max-drop {step:.4f} or more)"
            )
            continue
        enough = int(np.ceil(1 / max_drop - 1e-9))
        out.append(
            f"with {n} {part} rows, one changed {_COUNTED[metric]} drops {metric} by {step:.4f}: "
            f"--max-drop {max_drop:g} allows none on them (give at least {enough} {part} rows, "
            f"or --max-drop {step:.4f} or more)"
        )
    return out
