"""The distillation objective: what the student is fitted to, as one loss over target rows.

:func:`presso.train.fit` hands a loss ``(student outputs, target rows)``; the target rows
pack the teacher's outputs and, for classification, the label (``NO_LABEL`` where the
data gives none) in one float matrix, so the generic loop needs to know nothing of
distillation. Hint (feature) distillation needs the teacher's intermediate features,
which do not fit in memory for every row of a transformer (rows x tokens x width), so
:class:`Trainee` runs the frozen teacher beside the student on each batch instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presso.errors import PressoError
from presso.train.losses import (
    FeatureTap,
    HintLoss,
    cosine_loss,
    regression_loss,
    similarity_loss,
    soft_target_loss,
)


def target_rows(teacher: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Teacher outputs flattened per row, then the label column when there are labels."""
    flat = np.asarray(teacher, np.float32).reshape(len(teacher), -1)
    if labels is None:
        return flat
    return np.concatenate([flat, np.asarray(labels, np.float32).reshape(-1, 1)], axis=1)


class Trainee(nn.Module):
    """The student as :func:`fit` trains it: plus the hint projections (trained with it) and,
    when there are hints, the frozen teacher run on the same batch for its features.

    The teacher is kept out of the module tree (no parameters to train, not saved in
    checkpoints); ``hint_value`` holds the last batch's hint loss, the mean over the pairs
    (``normalize``: each pair's MSE relative to the teacher's mean square)."""

    _teacher: nn.Module | None  # set with object.__setattr__: not a submodule

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        hints: list[list[str]] | list[tuple[str, str]],
        example: tuple[Tensor, ...],
        normalize: bool = False,
    ):
        super().__init__()
        self.student = student
        self.hints = [tuple(pair) for pair in hints]
        self.projections = nn.ModuleList()
        self.hint_value: Tensor | None = None
        object.__setattr__(self, "_teacher", teacher)
        if self.hints:
            if teacher is None:
                raise PressoError(
                    "hints compare the student's layers with the teacher's, so they need a PyTorch "
                    "teacher; drop the hints option for an ONNX or callable teacher."
                )
            teacher.eval()
            s_feats, t_feats = self._features(example)
            for s_name, t_name in self.hints:
                s, t = s_feats[s_name], t_feats[t_name]
                axis = 1 if s.ndim == 4 else -1
                self.projections.append(HintLoss(int(s.shape[axis]), int(t.shape[axis]), normalize=normalize))

    def _features(self, xs) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        teacher = self._teacher
        assert teacher is not None  # __init__ refuses hints without a teacher
        with FeatureTap(self.student, [s for s, _ in self.hints]) as st:
            self._out = self.student(*xs)
        with torch.no_grad(), FeatureTap(teacher, [t for _, t in self.hints]) as tt:
            teacher(*xs)
        return st.features, tt.features

    def forward(self, *xs):
        if not self.hints:
            return self.student(*xs)
        s_feats, t_feats = self._features(xs)
        self.hint_value = sum(
            proj(s_feats[s], t_feats[t]) for proj, (s, t) in zip(self.projections, self.hints, strict=True)
        ) / len(self.hints)
        return self._out


def distill_loss(
    kind: str,
    n_out: int,
    *,
    alpha: float,
    temperature: float,
    has_labels: bool,
    trainee: Trainee,
    hint_weight: float,
    rank_weight: float = 0.0,
    rank_loss: str = "kl",
    rank_temperature: float = 0.05,
):
    """Loss of student outputs against :func:`target_rows`.

    ``kl``: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)``, the
    cross-entropy over the batch's rows that have a label (mixup and extra rows have none;
    a batch without labelled rows counts the soft term alone). ``mse`` / ``cosine`` compare
    with the teacher's outputs; ``cosine`` plus ``rank_weight`` x :func:`similarity_loss` (the
    batch's similarity matrices, ``rank_loss`` kl or mse at ``rank_temperature``). Plus
    ``hint_weight`` x the hint loss."""

    def loss(out: Tensor, targets: Tensor) -> Tensor:
        t = targets[:, :n_out]
        if kind == "kl":
            value = alpha * soft_target_loss(out, t.reshape(out.shape), temperature) if alpha > 0 else 0.0
            if has_labels and alpha < 1:
                y = targets[:, n_out].round().long()
                known = y >= 0
                if bool(known.any()):
                    value = value + (1 - alpha) * F.cross_entropy(out[known], y[known])
            if not torch.is_tensor(value):  # alpha 0 and no labelled row in this batch
                value = out.sum() * 0.0
        elif kind == "mse":
            value = regression_loss(out, t)
        else:
            value = cosine_loss(out, t)
            if rank_weight > 0:
                value = value + rank_weight * similarity_loss(out, t, rank_temperature, rank_loss)
        if trainee.hints and trainee.hint_value is not None and trainee.training:
            value = value + hint_weight * trainee.hint_value
        return value

    return loss
