"""What stages that fine-tune the PyTorch model (qat, hashed; later pruning, low-rank and
distillation) train on: the original model's outputs on the calibration rows, with a
seeded part held back for early stopping. The evaluation rows are never trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from presso.errors import PressoError
from presso.techniques.base import StageContext

Data = tuple[dict[str, np.ndarray], np.ndarray]


def teacher_split(ctx: StageContext, fraction: float, stage: str) -> tuple[Data, Data | None]:
    """(training, validation) inputs and teacher outputs from a seeded split of the
    calibration rows; validation is None with a single row."""
    n = len(ctx.calibration)
    order = np.random.default_rng(ctx.seed).permutation(n)
    n_val = max(1, round(n * fraction)) if n > 1 else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if len(train_idx) == 0:
        raise PressoError(f"The '{stage}' stage needs calibration rows to fine-tune on; got {n}. "
                          "Give more data or a larger --calibration-fraction.")
    inputs = {k: v for k, v in ctx.calibration.inputs.items() if k in ctx.input_names}
    teacher = np.asarray(ctx.teacher, np.float32)
    train = ({k: v[train_idx] for k, v in inputs.items()}, teacher[train_idx])
    val = ({k: v[val_idx] for k, v in inputs.items()}, teacher[val_idx]) if n_val else None
    return train, val


def fit_to_teacher(module, train: Data, val: Data | None, ctx: StageContext, stage: str, cfg,
                   *, patience: int | None, before_epoch=None):
    """Fine-tune ``module`` to the teacher's outputs with ``cfg``'s epochs, lr, batch size,
    temperature and time cap, logging each epoch; returns :class:`presso.train.FitReport`."""
    from presso.train import FitSettings, fit, teacher_loss

    settings = FitSettings(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed,
                           patience=patience,
                           max_seconds=None if cfg.max_minutes is None else cfg.max_minutes * 60)

    def on_epoch(row: dict) -> None:
        score = row.get("val_score")
        ctx.log(f"{stage}: epoch {row['epoch']}/{cfg.epochs}, loss {row['train_loss']:.4g}"
                + ("" if score is None else f", validation loss {-score:.4g}"))

    # Validation by the (continuous) teacher loss: agreement on a few dozen rows saturates
    # at 1.0 before fine-tuning starts, and early stopping would then keep the start.
    return fit(module, train, val, teacher_loss(ctx.task, cfg.temperature), None, settings,
               input_names=ctx.input_names, on_epoch=on_epoch, before_epoch=before_epoch)


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

    from presso.techniques.quantization.weight_only import float_weight_plans

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
