"""What the ``prune`` and ``slim`` stages share: fine-tuning data, the regularised loss,
and the accuracy-aware retries with milder pruning when the budget breaks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.pruning.config import RecoveryOptions
from presso.techniques.recovery import Data, fit_to_teacher, mixup_rows, teacher_split, weights_by_value

# The stage's own options (PruneConfig, SlimConfig, ...): ``cfg`` keeps the stage's type.
C = TypeVar("C", bound=RecoveryOptions)
# What with_backoff's attempts are given: a fraction, or None for a single fixed attempt.
F = TypeVar("F", bound=float | None)


@dataclass
class Recovery(Generic[C]):
    """Fine-tuning rows and loss of one stage; ``fit`` trains a module on them."""

    ctx: StageContext
    stage: str
    cfg: C  # epochs and lr resolved (never None)
    train: Data
    val: Data | None
    n_mixed: int

    @property
    def loss(self):
        from presso.train import label_loss, teacher_loss

        if self.cfg.targets == "labels":
            return label_loss(self.ctx.task)
        return teacher_loss(self.ctx.task, self.cfg.temperature)

    def fit(
        self, module: nn.Module, layers: Sequence[nn.Module], *, before_epoch=None, epochs: int | None = None
    ):
        """Fine-tune ``module`` in place (penalising ``layers``' weights if the options say so)."""
        from presso.techniques.pruning.regularizers import regularized

        cfg = self.cfg if epochs is None else self.cfg.model_copy(update={"epochs": epochs})
        loss = regularized(self.loss, layers, l1=cfg.l1, group_lasso=cfg.group_lasso)  # itself if both 0
        return fit_to_teacher(
            module,
            self.train,
            self.val,
            self.ctx,
            self.stage,
            cfg,
            patience=cfg.patience,
            before_epoch=before_epoch,
            loss=loss,
        )

    def describe(self, report) -> str:
        rows = len(self.train[1]) - self.n_mixed
        what = "labels" if self.cfg.targets == "labels" else "the original model's outputs"
        penalties = [f"{k} {getattr(self.cfg, k)}" for k in ("l1", "group_lasso") if getattr(self.cfg, k)]
        epochs = f"{report.epochs_run} epoch{'' if report.epochs_run == 1 else 's'}"
        return (
            f"fine-tuned to {what} for {epochs} on {rows} calibration rows"
            + (f" and {self.n_mixed} mixup rows labelled by the original model" if self.n_mixed else "")
            + (f" with {' and '.join(penalties)} penalties" if penalties else "")
            + (f" (best epoch {report.best_epoch}, stopped: {report.stopped})" if report.epochs_run else "")
        )


def recovery_for(ctx: StageContext, cfg: C, stage: str) -> Recovery[C]:
    if ctx.module is None or ctx.export is None:
        raise PressoError(
            f"The '{stage}' stage prunes and fine-tunes the PyTorch model; give presso a PyTorch "
            f"model or Hugging Face folder, and put '{stage}' before ONNX stages."
        )
    big = ctx.transformer is not None
    cfg = cfg.model_copy(
        update={
            "epochs": cfg.epochs if cfg.epochs is not None else (4 if big else 60),
            "lr": cfg.lr if cfg.lr is not None else (2e-4 if big else 1e-3),
        }
    )
    train, val = teacher_split(ctx, cfg.validation_fraction, stage, cfg.targets)
    n_mixed = 0
    if cfg.targets == "teacher" and cfg.augment and cfg.epochs:
        train, n_mixed = mixup_rows(
            train, copy.deepcopy(ctx.module).eval(), cfg.augment, ctx.seed, ctx.input_names
        )
    return Recovery(ctx, stage, cfg, train, val, n_mixed)


def example_inputs(ctx: StageContext, rows: int = 8) -> tuple[torch.Tensor, ...]:
    """A few calibration rows as tensors, in the model's call order (for tracing)."""
    head = ctx.calibration.head(rows).inputs
    return tuple(torch.from_numpy(np.ascontiguousarray(head[n])) for n in ctx.input_names)


def layer_nodes(exported: Path, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """Layer name -> the ONNX node that uses its (trained, exported) weight."""
    weights = {n: cast(torch.Tensor, m.weight).detach().numpy() for n, m in layers.items()}  # Linear / Conv
    return {name: node for name, node, _, _ in weights_by_value(exported, weights)}


def milder(fraction: float, steps: int) -> list[float]:
    """``fraction`` then ``steps`` milder ones: the kept fraction doubles while over half is
    pruned (0.9 -> 0.8 -> 0.6), below that the pruned fraction halves (0.5 -> 0.25)."""
    out = [fraction]
    for _ in range(steps):
        f = out[-1]
        f = 1 - 2 * (1 - f) if f > 0.5 + 1e-9 else f / 2
        if f < 0.05:
            break
        out.append(round(f, 6))
    return out


def with_backoff(
    fractions: Sequence[F],
    attempt: Callable[[F], Candidate],
    ctx: StageContext,
    stage: str,
    what: str = "milder",
) -> StageResult:
    """Candidates at each fraction in turn, built lazily: the next, milder one is trained
    only when the previous failed the budget on the calibration rows or, when the
    pipeline verifies it, on the held-out rows."""
    tried: list[Candidate] = []

    def ranked():
        for i, fraction in enumerate(fractions):
            if i:
                last = tried[-1]
                assert last.score is not None  # every attempt is scored
                drop = last.heldout_drop if last.heldout_drop is not None else last.score.drop
                ctx.log(
                    f"{stage}: {last.name} broke the budget (drop {drop:.4f}); retrying {what} at {fraction:g}"
                )
            cand = attempt(fraction)
            tried.append(cand)
            if cand.score is not None and cand.score.passed:
                assert cand.path is not None  # a scored candidate was exported
                cand.timed(ctx.time_models({cand.name: cand.path})[cand.name])
                yield cand

    return StageResult(ranked=ranked(), tried=tried)
