"""What stages that fine-tune the PyTorch model (qat, hashed; later pruning, low-rank and
distillation) train on: the original model's outputs on the calibration rows, with a
seeded part held back for early stopping. The evaluation rows are never trained on."""

from __future__ import annotations

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
