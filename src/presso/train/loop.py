"""A seeded fine-tuning loop: mini-batch AdamW, a validation score per epoch, best weights kept.

QAT, pruning, low-rank factorisation and distillation all fit a module to targets (labels
or a teacher's outputs) the same way, so they share :func:`fit`. Validation of the starting
weights gives epoch 0, and the best weights are restored at the end: fine-tuning never ends
worse on the validation data than where it started.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presso.errors import PressoError
from presso.tasks import get_task

Data = tuple[dict[str, np.ndarray], np.ndarray]
LossFn = Callable[[Tensor, Tensor], Tensor]
ScoreFn = Callable[[np.ndarray, np.ndarray], float]
_EVAL_BATCH = 256


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit` trains: epochs, AdamW step size, batch size, stopping rules, seed.

    ``patience``: stop after that many epochs without a better validation score (None:
    run every epoch). ``max_seconds``: stop after the epoch that crosses this wall-clock
    time. Two fits with the same settings, module and data give identical weights.
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    patience: int | None = 3
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self):
        bad = None
        if not (_is_int(self.epochs) and self.epochs >= 0):
            bad = ("epochs", "an int >= 0", self.epochs)
        elif not (_is_num(self.lr) and self.lr > 0):
            bad = ("lr", "a positive number", self.lr)
        elif not (_is_int(self.batch_size) and self.batch_size >= 1):
            bad = ("batch_size", "an int >= 1", self.batch_size)
        elif not (_is_num(self.weight_decay) and self.weight_decay >= 0):
            bad = ("weight_decay", "a number >= 0", self.weight_decay)
        elif not (self.patience is None or (_is_int(self.patience) and self.patience >= 1)):
            bad = ("patience", "an int >= 1 or None", self.patience)
        elif not _is_int(self.seed):
            bad = ("seed", "an int", self.seed)
        elif not (self.max_seconds is None or (_is_num(self.max_seconds) and self.max_seconds > 0)):
            bad = ("max_seconds", "a positive number or None", self.max_seconds)
        if bad:
            raise PressoError(f"The '{bad[0]}' option of the fine-tuning settings must be {bad[1]}. "
                              f"Got {bad[2]!r} instead.")


@dataclass
class FitReport:
    """What :func:`fit` did.

    ``best_epoch`` 0 means the starting weights were best (validation never improved);
    without validation data it is the last epoch and ``best_score`` is NaN. ``stopped``
    is "epochs", "early-stop" or "time".
    """

    epochs_run: int
    best_epoch: int
    best_score: float
    history: list[dict]  # per epoch: {"epoch", "train_loss", "val_score"}
    stopped: str


def _tensor(a, device) -> Tensor:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    elif a.dtype.kind in "iu":
        a = a.astype(np.int64, copy=False)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _columns(data: Data, names: list[str] | None, what: str, device) -> tuple[list[Tensor], Tensor]:
    """The inputs in call order and the targets, as tensors on ``device``; rows checked."""
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], dict) and data[0]):
        raise PressoError(f"The {what} data must be a pair (inputs, targets) with inputs a non-empty "
                          "dict of input name -> array.")
    inputs, targets = data
    names = list(inputs) if names is None else names
    missing = [n for n in names if n not in inputs]
    if missing:
        raise PressoError(f"Input '{missing[0]}' is not in the {what} data; it has: {', '.join(inputs)}.")
    n = len(targets)
    for name in names:
        if len(inputs[name]) != n:
            raise PressoError(f"The {what} input '{name}' has {len(inputs[name])} rows but the targets "
                              f"have {n}; give one target row per input row.")
    if n == 0:
        raise PressoError(f"The {what} data has no rows.")
    return [_tensor(inputs[name], device) for name in names], _tensor(targets, device)


def _first(out) -> Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise PressoError(f"The module returned {type(out).__name__}; fine-tuning needs a tensor or a "
                          "tuple whose first item is the output tensor.")
    return out


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and kernels only; biases, norms and quantizer scales are not decayed."""
    decay, keep = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        extra = ".parametrizations." in f".{name}" and not name.endswith(".original")
        (decay if p.ndim >= 2 and not extra else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _predict(module: nn.Module, xs: list[Tensor]) -> Tensor:
    module.eval()
    with torch.no_grad():
        outs = [_first(module(*[x[i:i + _EVAL_BATCH] for x in xs]))
                for i in range(0, len(xs[0]), _EVAL_BATCH)]
    return torch.cat(outs).float().cpu()


def _train_epoch(module, xs, y, loss_fn, opt, batch_size: int, gen: torch.Generator) -> float:
    module.train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    total, seen = 0.0, 0
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        if len(idx) == 1 and n > 1:  # BatchNorm cannot train on one row; reshuffled next epoch
            continue
        loss = loss_fn(_first(module(*[x[idx] for x in xs])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / seen


def _better(score: float, best: float) -> bool:
    return math.isfinite(score) and (not math.isfinite(best) or score > best)


def fit(module: nn.Module, train: Data, val: Data | None, loss_fn: LossFn,
        score_fn: ScoreFn | None = None, settings: FitSettings = FitSettings(),
        input_names: list[str] | None = None, on_epoch: Callable[[dict], None] | None = None,
        before_epoch: Callable[[int], bool | None] | None = None) -> FitReport:
    """Fine-tune ``module`` in place on ``train``; keep the weights that score best on ``val``.

    Parameters
    ----------
    module : nn.Module
        Called positionally with one mini-batch per input, in ``input_names`` order
        (default: the order of the inputs dict). A tuple output counts by its first item.
    train, val : (dict of name -> array, array)
        Inputs (rows first) and targets: labels or a teacher's outputs. Without ``val``
        every epoch runs (no early stopping) and the last weights are kept.
    loss_fn : callable (outputs, targets) -> scalar tensor
        For example :func:`teacher_loss` or ``torch.nn.functional.cross_entropy``.
    score_fn : callable (outputs, targets) -> float, optional
        Validation score, higher is better (e.g. :func:`task_score`); default ``-loss_fn``.
    settings : FitSettings
        Epochs, step size, batch size, stopping rules and seed.
    on_epoch : callable, optional
        Called with each history row ``{"epoch", "train_loss", "val_score"}``.
    before_epoch : callable (epoch) -> bool or None, optional
        Called before each epoch (1-based). Returning True says the module now computes
        something else (progressive QAT enabled more layers): its current weights are
        validated again and become the reference that later epochs must beat.

    Returns
    -------
    FitReport
        The module holds the best weights (also after Ctrl-C, which propagates).

    Examples
    --------
    >>> import numpy as np, torch
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    >>> y = x @ np.array([[1.0], [2.0], [-1.0]], np.float32)
    >>> net = torch.nn.Linear(3, 1)
    >>> r = fit(net, ({"x": x}, y), ({"x": x}, y), torch.nn.functional.mse_loss,
    ...         settings=FitSettings(epochs=3, lr=0.05, batch_size=16))
    >>> r.epochs_run, r.best_epoch > 0
    (3, True)
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    xs, y = _columns(train, input_names, "training", device)
    names = input_names if input_names is not None else list(train[0])
    val_xs, val_y = _columns(val, names, "validation", device) if val is not None else (None, None)

    def validate() -> float:
        out = _predict(module, val_xs)
        if score_fn is None:
            with torch.no_grad():
                return -float(loss_fn(out, val_y.cpu()))
        return float(score_fn(out.numpy(), np.asarray(val[1])))

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    opt = torch.optim.AdamW(_param_groups(module, settings.weight_decay), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    was_training, start = module.training, time.monotonic()
    history: list[dict] = []
    stopped, best_epoch, since_best = "epochs", 0, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from a seeded, private stream
        torch.manual_seed(settings.seed)
        best_score = validate() if val is not None else math.nan
        best_state = snapshot() if val is not None else None
        try:
            for epoch in range(1, settings.epochs + 1):
                if before_epoch is not None and before_epoch(epoch) and val is not None:
                    best_score, best_state, best_epoch, since_best = validate(), snapshot(), epoch - 1, 0
                train_loss = _train_epoch(module, xs, y, loss_fn, opt, settings.batch_size, gen)
                score = validate() if val is not None else None
                row = {"epoch": epoch, "train_loss": train_loss, "val_score": score}
                history.append(row)
                if on_epoch is not None:
                    on_epoch(row)
                if val is None:
                    best_epoch = epoch
                elif _better(score, best_score):
                    best_score, best_state, best_epoch, since_best = score, snapshot(), epoch, 0
                else:
                    since_best += 1
                if epoch == settings.epochs:
                    break
                if val is not None and settings.patience is not None and since_best >= settings.patience:
                    stopped = "early-stop"
                    break
                if settings.max_seconds is not None and time.monotonic() - start >= settings.max_seconds:
                    stopped = "time"
                    break
        finally:
            if best_state is not None:
                module.load_state_dict(best_state)
            module.train(was_training)
    return FitReport(len(history), best_epoch, best_score, history, stopped)


def teacher_loss(task: str, temperature: float = 1.0) -> LossFn:
    """Loss of a student's outputs against a teacher's raw outputs, by task.

    classification: ``KL(softmax(t/T) || softmax(s/T)) * T**2`` (batch mean; the ``T**2``
    keeps gradient sizes comparable across temperatures, Hinton et al. 2015);
    regression, forecast, anomaly: mean squared error; embedding: 1 - mean cosine per row.

    Examples
    --------
    >>> import torch
    >>> loss = teacher_loss("classification", temperature=2.0)
    >>> float(loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])))
    0.0
    """
    get_task(task)
    if not (_is_num(temperature) and temperature > 0):
        raise PressoError(f"The 'temperature' option must be a positive number. Got {temperature!r} instead.")
    t = float(temperature)

    def check(s: Tensor, ref: Tensor) -> Tensor:
        if not ref.is_floating_point():
            raise PressoError("teacher_loss compares with a teacher's raw outputs, but the targets are "
                              "integers; for labels use torch.nn.functional.cross_entropy.")
        if ref.numel() != s.numel():
            raise PressoError(f"Student outputs {tuple(s.shape)} and teacher outputs {tuple(ref.shape)} "
                              "differ in size; fit the student to outputs of the same shape.")
        return ref.reshape(s.shape).to(s.dtype)

    def kl(s: Tensor, ref: Tensor) -> Tensor:
        ref = check(s, ref)
        return F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(ref / t, -1), reduction="batchmean",
                        log_target=True) * (t * t)

    def mse(s: Tensor, ref: Tensor) -> Tensor:
        return F.mse_loss(s, check(s, ref))

    def cosine(s: Tensor, ref: Tensor) -> Tensor:
        ref = check(s, ref)
        return 1.0 - F.cosine_similarity(s.reshape(len(s), -1), ref.reshape(len(s), -1), dim=1).mean()

    return {"classification": kl, "embedding": cosine}.get(task, mse)


def label_loss(task: str) -> LossFn:
    """Loss of outputs against the data's own labels: cross-entropy for classification
    (integer class labels), mean squared error otherwise.

    Examples
    --------
    >>> import torch
    >>> round(float(label_loss("regression")(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))), 3)
    2.0
    """
    get_task(task)

    def ce(s: Tensor, y: Tensor) -> Tensor:
        if y.is_floating_point() and torch.any(y != y.round()):
            raise PressoError("Classification labels must be class indices (integers); got fractional values.")
        return F.cross_entropy(s, y.reshape(-1).long())

    def mse(s: Tensor, y: Tensor) -> Tensor:
        if y.numel() != s.numel():
            raise PressoError(f"Outputs {tuple(s.shape)} and labels {tuple(y.shape)} differ in size; "
                              "fine-tune on labels only with one target per output value.")
        return F.mse_loss(s, y.reshape(s.shape).to(s.dtype))

    return ce if task == "classification" else mse


def task_score(task: str) -> ScoreFn:
    """Validation score of outputs against a teacher's outputs, higher is better, by task.

    classification: argmax agreement (1-d integer targets count as labels); regression,
    forecast, anomaly: negative mean squared error; embedding: mean cosine per row.

    Examples
    --------
    >>> import numpy as np
    >>> task_score("classification")(np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([[0.0, 3.0], [0.0, 3.0]]))
    0.5
    """
    get_task(task)

    def agreement(out: np.ndarray, ref: np.ndarray) -> float:
        out, ref = np.asarray(out), np.asarray(ref)
        labels = ref if ref.ndim == out.ndim - 1 else ref.argmax(-1)
        return float(np.mean(out.argmax(-1) == labels))

    def neg_mse(out: np.ndarray, ref: np.ndarray) -> float:
        out = np.asarray(out, np.float64)
        return -float(np.mean((out - np.asarray(ref, np.float64).reshape(out.shape)) ** 2))

    def cosine(out: np.ndarray, ref: np.ndarray) -> float:
        o = np.asarray(out, np.float64).reshape(len(out), -1)
        r = np.asarray(ref, np.float64).reshape(len(o), -1)
        norms = np.maximum(np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
        return float(np.mean((o * r).sum(1) / norms))

    return {"classification": agreement, "embedding": cosine}.get(task, neg_mse)
