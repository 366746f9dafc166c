"""What stages that fine-tune the PyTorch model (qat, hashed, pruning; later low-rank and
distillation) train on: the original model's outputs on the calibration rows (or the
user's labels for them), with a seeded part held back for early stopping, optionally
plus mixup rows labelled by the original model. The evaluation rows are never trained on."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.recovery_options import RecoveryOptions

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


# ---------------------------------------------------------------- recovery and retries

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
        from presso.train.regularizers import regularized

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
