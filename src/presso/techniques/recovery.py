"""What stages that fine-tune the PyTorch model (qat, hashed, pruning; later low-rank and
distillation) train on: the original model's outputs on the calibration rows (or the
user's labels for them), with a seeded part held back for early stopping, optionally
plus mixup rows labelled by the original model. The evaluation rows are never trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from presso.errors import PressoError
from presso.techniques.base import StageContext

Data = tuple[dict[str, np.ndarray], np.ndarray]


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) row indices of :func:`teacher_split`: a seeded ``fraction``
    (at least one row, none of a single row) held back, each part in row order."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction)) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def teacher_split(
    ctx: StageContext, fraction: float, stage: str, targets: str = "teacher"
) -> tuple[Data, Data | None]:
    """(training, validation) inputs and targets from a seeded split of the calibration
    rows; validation is None with a single row. ``targets``: "teacher" (the original
    model's outputs) or "labels" (the data's target column)."""
    train_idx, val_idx = split_indices(len(ctx.calibration), fraction, ctx.seed)
    n_val = len(val_idx)
    if len(train_idx) == 0:
        raise PressoError(
            f"The '{stage}' stage needs calibration rows to fine-tune on; got {len(ctx.calibration)}. "
            "Give more data or a larger --calibration-fraction."
        )
    inputs = {k: v for k, v in ctx.calibration.inputs.items() if k in ctx.input_names}
    if targets == "labels":
        if ctx.labels is None:
            raise PressoError(
                f"The '{stage}' stage was asked to fine-tune on labels (targets: labels), but the "
                "data has none. Give data with a target column, or use targets: teacher."
            )
        y = np.asarray(ctx.labels)
    else:
        y = np.asarray(ctx.teacher, np.float32)
    train = ({k: v[train_idx] for k, v in inputs.items()}, y[train_idx])
    val = ({k: v[val_idx] for k, v in inputs.items()}, y[val_idx]) if n_val else None
    return train, val


def mixup_inputs(inputs: dict[str, np.ndarray], copies: int, seed: int) -> dict[str, np.ndarray]:
    """``copies`` x the rows of ``inputs`` as mixup rows ``lam * x_i + (1 - lam) * x_j``
    (``lam`` uniform, pairs drawn with ``seed``); float inputs only."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(inputs.values())))
    m = copies * n
    i, j, lam = rng.integers(0, n, m), rng.integers(0, n, m), rng.random(m, dtype=np.float32)
    return {
        k: (
            lam.reshape(-1, *[1] * (v.ndim - 1)) * v[i] + (1 - lam).reshape(-1, *[1] * (v.ndim - 1)) * v[j]
        ).astype(v.dtype)
        for k, v in inputs.items()
    }  # (m, ...)


def mixup_rows(train: Data, teacher, copies: int, seed: int, names: list[str]) -> tuple[Data, int]:
    """``train`` plus ``copies`` x its rows of mixup inputs (see :func:`mixup_inputs`)
    labelled by ``teacher``, the model before compression; float inputs only.

    A few hundred calibration rows are few for fine-tuning: the mixed rows keep it from
    overfitting them (digits, hashed: 0.6-0.8 points lost with them, 1.6-2.8 without)."""
    import torch

    from presso.model.loaded import first_tensor

    inputs, targets = train
    if copies == 0 or any(inputs[k].dtype.kind != "f" for k in names):
        return train, 0
    mixed = mixup_inputs(inputs, copies, seed)
    m = len(next(iter(mixed.values())))
    outs = []
    with torch.no_grad():
        for start in range(0, m, 256):
            out = teacher(*[torch.from_numpy(mixed[k][start : start + 256]) for k in names])
            outs.append(first_tensor(out).float().numpy())
    labels = np.concatenate(outs).reshape(m, *targets.shape[1:])
    return (
        {k: np.concatenate([v, mixed[k]]) for k, v in inputs.items()},
        np.concatenate([targets, labels]),
    ), m


def fit_to_teacher(
    module,
    train: Data,
    val: Data | None,
    ctx: StageContext,
    stage: str,
    cfg,
    *,
    patience: int | None,
    before_epoch=None,
    loss=None,
):
    """Fine-tune ``module`` to the teacher's outputs with ``cfg``'s epochs, lr, batch size,
    temperature and time cap, logging each epoch; returns :class:`presso.train.FitReport`.

    ``loss`` replaces the teacher loss (e.g. :func:`presso.train.label_loss`, or a loss with
    L1 / group-lasso penalties). Validation compares that same loss: with a plain one the
    best-weights restore would undo the penalties' work by keeping the weights from before
    it (seen on 3-epoch runs)."""
    from presso.train import FitSettings, fit, teacher_loss

    settings = FitSettings(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        patience=patience,
        max_seconds=None if cfg.max_minutes is None else cfg.max_minutes * 60,
    )

    def on_epoch(row: dict) -> None:
        score = row.get("val_score")
        ctx.log(
            f"{stage}: epoch {row['epoch']}/{cfg.epochs}, loss {row['train_loss']:.4g}"
            + ("" if score is None else f", validation loss {-score:.4g}")
        )

    # Validation by the (continuous) teacher loss: agreement on a few dozen rows saturates
    # at 1.0 before fine-tuning starts, and early stopping would then keep the start.
    loss = loss if loss is not None else teacher_loss(ctx.task, cfg.temperature)
    return fit(
        module,
        train,
        val,
        loss,
        None,
        settings,
        input_names=ctx.input_names,
        on_epoch=on_epoch,
        before_epoch=before_epoch,
    )


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()


def weights_by_value(onnx_path: Path, weights: dict[str, np.ndarray]) -> list[tuple[str, str, str, bool]]:
    """(layer, ONNX node, weight initializer, transposed) for each float weight initializer
    of an exported model that equals one of ``weights`` (PyTorch layout), bit for bit.

    Matched by value, not name: the exporter renames weights and stores a MatMul's as
    ``W.T`` (transposed). A weight the exporter changed (a BatchNorm folded into a Conv)
    has no match.
    """
    import onnx
    from onnx import numpy_helper

    from presso.techniques.graph import float_weight_plans

    by_digest = {_digest(w): name for name, w in weights.items()}
    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node, _, weight in float_weight_plans(model, set()):
        w = numpy_helper.to_array(inits[weight])
        for candidate, transposed in ((w, False), (w.T, True)) if w.ndim == 2 else ((w, False),):
            name = by_digest.get(_digest(candidate))
            if name is not None:
                out.append((name, node, weight, transposed))
                break
    return out
