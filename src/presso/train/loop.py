"""A seeded fine-tuning loop: mini-batch AdamW, a validation score per epoch, best weights kept.

QAT, pruning, low-rank factorisation and distillation all fit a module to targets (labels
or a teacher's outputs) the same way, so they share :func:`fit`. Validation of the starting
weights gives epoch 0, and the best weights are restored at the end: fine-tuning never ends
worse on the validation data than where it started.

Long fits can write a checkpoint after each epoch and resume from it bit for bit, and run
data-parallel under torchrun (:mod:`presso.train.distributed`).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presso.errors import PressoError
from presso.tasks import get_task
from presso.train import distributed as _dist
from presso.train.checkpoint import FORMAT, fingerprint_of, read_checkpoint, save_atomic
from presso.train.losses import (
    check_temperature,
    cosine_loss,
    finite_number,
    loss_kind,
    regression_loss,
    soft_target_loss,
)

Data = tuple[dict[str, np.ndarray], np.ndarray]
LossFn = Callable[[Tensor, Tensor], Tensor]
ScoreFn = Callable[[np.ndarray, np.ndarray], float]
_EVAL_BATCH = 256


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


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
        elif not (finite_number(self.lr) and self.lr > 0):
            bad = ("lr", "a positive number", self.lr)
        elif not (_is_int(self.batch_size) and self.batch_size >= 1):
            bad = ("batch_size", "an int >= 1", self.batch_size)
        elif not (finite_number(self.weight_decay) and self.weight_decay >= 0):
            bad = ("weight_decay", "a number >= 0", self.weight_decay)
        elif not (self.patience is None or (_is_int(self.patience) and self.patience >= 1)):
            bad = ("patience", "an int >= 1 or None", self.patience)
        elif not _is_int(self.seed):
            bad = ("seed", "an int", self.seed)
        elif not (self.max_seconds is None or (finite_number(self.max_seconds) and self.max_seconds > 0)):
            bad = ("max_seconds", "a positive number or None", self.max_seconds)
        if bad:
            raise PressoError(
                f"The '{bad[0]}' option of the fine-tuning settings must be {bad[1]}. Got {bad[2]!r} instead."
            )


@dataclass
class FitReport:
    """What :func:`fit` did.

    ``best_epoch`` 0 means the starting weights were best (validation never improved);
    without validation data it is the last epoch and ``best_score`` is NaN. ``stopped``
    is "epochs", "early-stop" or "time". ``resumed_from``: the epoch of the checkpoint the
    fit went on from (0: it started afresh); ``epochs_run`` and ``history`` count the
    epochs before it too.
    """

    epochs_run: int
    best_epoch: int
    best_score: float
    history: list[dict]  # per epoch: {"epoch", "train_loss", "val_score"}
    stopped: str
    resumed_from: int = 0


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
        raise PressoError(
            f"The {what} data must be a pair (inputs, targets) with inputs a non-empty "
            "dict of input name -> array."
        )
    inputs, targets = data
    names = list(inputs) if names is None else names
    missing = [n for n in names if n not in inputs]
    if missing:
        raise PressoError(f"Input '{missing[0]}' is not in the {what} data; it has: {', '.join(inputs)}.")
    n = len(targets)
    for name in names:
        if len(inputs[name]) != n:
            raise PressoError(
                f"The {what} input '{name}' has {len(inputs[name])} rows but the targets "
                f"have {n}; give one target row per input row."
            )
    if n == 0:
        raise PressoError(f"The {what} data has no rows.")
    return [_tensor(inputs[name], device) for name in names], _tensor(targets, device)


def _first(out) -> Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise PressoError(
            f"The module returned {type(out).__name__}; fine-tuning needs a tensor or a "
            "tuple whose first item is the output tensor."
        )
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
        outs = [
            _first(module(*[x[i : i + _EVAL_BATCH] for x in xs])) for i in range(0, len(xs[0]), _EVAL_BATCH)
        ]
    return torch.cat(outs).float().cpu()


def _train_epoch(
    module, xs, y, loss_fn, opt, batch_size: int, gen: torch.Generator, net: nn.Module | None = None
) -> float:
    """One pass over the rows in the order ``gen`` draws; the mean training loss.

    ``net`` is ``module`` wrapped in DistributedDataParallel. Every rank then draws the same
    permutation, takes its contiguous shard of each global batch and scales its mean loss
    by its share of the rows (``rows * world / global rows``): DDP averages gradients over
    ranks, so each step is the one a single process takes on the whole batch, up to float
    summation order. That holds for losses that are a mean over rows plus terms that do
    not depend on the rows (penalties on the weights), which is what :func:`fit` asks for.
    """
    (module if net is None else net).train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)  # (n,), the same on every rank
    total, seen = 0.0, 0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        if len(idx) == 1 and n > 1 and batch_size > 1:  # a lone last row: BatchNorm cannot train on one
            continue  # decided on the global batch, so all ranks skip it together
        if net is None:
            loss = step = loss_fn(_first(module(*[x[idx] for x in xs])), y[idx])
        else:
            world = _dist.world_size()
            lo, hi = _dist.shard(len(idx), _dist.rank(), world)
            part, rows = idx[lo:hi], len(idx)
            out = _first(net(*[x[part] for x in xs]))  # every rank calls DDP: it syncs in forward
            if len(part):
                loss = loss_fn(out, y[part])
                step = loss * (len(part) * world / rows)
            else:  # fewer rows than ranks: a zero gradient still joins the average
                loss = step = out.sum() * 0.0
            idx = part
        opt.zero_grad(set_to_none=True)
        step.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    if net is not None:
        total, seen = _dist.all_sum([total, seen])
    return total / seen


def _better(score: float, best: float) -> bool:
    return math.isfinite(score) and (not math.isfinite(best) or score > best)


def fit(
    module: nn.Module,
    train: Data,
    val: Data | None,
    loss_fn: LossFn,
    score_fn: ScoreFn | None = None,
    settings: FitSettings = FitSettings(),
    input_names: list[str] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    before_epoch: Callable[[int], bool | None] | None = None,
    checkpoint: str | Path | None = None,
) -> FitReport:
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
        For example :func:`teacher_loss` or ``torch.nn.functional.cross_entropy``. A mean
        over rows, plus any terms that do not depend on the rows (weight penalties).
    score_fn : callable (outputs, targets) -> float, optional
        Validation score, higher is better (e.g. :func:`task_score`); default ``-loss_fn``.
    settings : FitSettings
        Epochs, step size, batch size, stopping rules and seed.
    on_epoch : callable, optional
        Called with each history row ``{"epoch", "train_loss", "val_score"}``, after that
        epoch's checkpoint is written.
    before_epoch : callable (epoch) -> bool or None, optional
        Called before each epoch (1-based). Returning True says the module now computes
        something else (progressive QAT enabled more layers): its current weights are
        validated again and become the reference that later epochs must beat. On resume
        it is called again for the finished epochs (its answer ignored) before the saved
        weights are loaded, so it should depend on the epoch only.
    checkpoint : str or Path, optional
        A file written (atomically) after every epoch with all that the next epochs need:
        weights, optimizer, best weights so far, history and random-number states. If it
        exists when ``fit`` starts, the fit goes on after its epoch and ends with exactly
        the weights and history of a fit that was never interrupted; one from a fit with
        other settings, rows or parameters is refused. After the last epoch it stays,
        marked finished: fitting again restores the best weights without training.

    Returns
    -------
    FitReport
        The module holds the best weights (also after Ctrl-C, which propagates; the
        checkpoint then holds the last finished epoch).

    Notes
    -----
    Under torchrun with an initialised process group (:func:`presso.train.distributed.init_from_env`)
    the fit is data-parallel: each global batch of ``settings.batch_size`` rows is split over
    the ranks and the gradients averaged by DistributedDataParallel (gloo, CPU), so the
    weights are those of one process up to float summation order (about 1e-6). Every rank
    validates on all of ``val``, so all take the same early-stopping decisions; rank 0 alone
    writes the checkpoint and every rank resumes from it (give all the same path, in a
    folder they share). Each rank draws dropout from its own seeded stream. DDP looks for
    parameters a step leaves unused (progressive QAT's switched-off layers) at the cost of
    one graph traversal per step, and warns once per process when it finds none.

    BatchNorm normalises each rank's shard with that shard's statistics, and the running
    statistics kept are rank 0's: results differ from one process unless the module is
    converted with ``nn.SyncBatchNorm`` (not supported here), and every shard then needs
    two rows or more.

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
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = fingerprint_of(module, settings, len(y), None if val is None else len(val_y))
    parallel, rank = _dist.active(), _dist.rank()

    def validate() -> float:
        out = _predict(module, val_xs)
        if score_fn is None:
            with torch.no_grad():
                return -float(loss_fn(out, val_y.cpu()))
        return float(score_fn(out.numpy(), np.asarray(val[1])))

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def save(epoch: int, stop: str | None) -> None:
        rngs = _dist.gather(torch.get_rng_state()) if parallel else [torch.get_rng_state()]
        error = None
        if rank == 0:
            try:
                save_atomic(
                    {
                        "format": FORMAT,
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "finished": stop is not None,
                        "stopped": stop or "",
                        "module": module.state_dict(),
                        "optimizer": opt.state_dict(),
                        "best_state": best_state,
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "since_best": since_best,
                        "history": history,
                        "generator": gen.get_state(),
                        "rng": rngs,
                        "elapsed": time.monotonic() - start,
                    },
                    path,
                )
            except Exception as e:
                error = e
        # Also the barrier: the other ranks go on once rank 0 has written, and stop if it failed.
        written = _dist.from_main(error is None) if parallel else error is None
        if error is not None:
            raise error
        if not written:
            raise PressoError(f"Rank 0 could not write the checkpoint {path}; see its error.")

    opt = torch.optim.AdamW(_param_groups(module, settings.weight_decay), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    was_training, start = module.training, time.monotonic()
    history: list[dict] = []
    stopped, best_epoch, since_best, best_score, best_state, done = "epochs", 0, 0, math.nan, None, 0
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from a seeded, private stream
        torch.manual_seed(settings.seed + rank)
        ckpt = read_checkpoint(path, fingerprint) if path is not None and path.exists() else None
        try:
            if ckpt is not None:
                done = ckpt["epoch"]
                if before_epoch is not None:  # hooks that switch layers on rebuild the module the weights fit
                    for epoch in range(1, done + 1):
                        before_epoch(epoch)
                module.load_state_dict(ckpt["module"])
                best_state, best_score, best_epoch = (
                    ckpt["best_state"],
                    ckpt["best_score"],
                    ckpt["best_epoch"],
                )
                since_best, history, stopped = ckpt["since_best"], ckpt["history"], ckpt["stopped"] or stopped
                start -= ckpt["elapsed"]  # the time cap counts the epochs before the interruption too
                if ckpt["finished"]:
                    return FitReport(len(history), best_epoch, best_score, history, stopped, done)
                opt.load_state_dict(ckpt["optimizer"])
                gen.set_state(ckpt["generator"])
                if len(ckpt["rng"]) == _dist.world_size():
                    torch.set_rng_state(ckpt["rng"][rank])
                else:  # resumed with another number of processes: fresh streams, not bit for bit
                    torch.manual_seed(settings.seed + rank + 7919 * done)
            # DDP starts every rank from rank 0's weights, before anything is validated.
            net = (
                nn.parallel.DistributedDataParallel(module, find_unused_parameters=True) if parallel else None
            )
            if ckpt is None and val is not None:
                best_score, best_state = validate(), snapshot()
            for epoch in range(done + 1, settings.epochs + 1):
                if before_epoch is not None and before_epoch(epoch) and val is not None:
                    best_score, best_state, best_epoch, since_best = validate(), snapshot(), epoch - 1, 0
                train_loss = _train_epoch(module, xs, y, loss_fn, opt, settings.batch_size, gen, net)
                if parallel:
                    _dist.broadcast_buffers(module)
                score = validate() if val is not None else None
                row = {"epoch": epoch, "train_loss": train_loss, "val_score": score}
                history.append(row)
                if val is None:
                    best_epoch = epoch
                elif _better(score, best_score):
                    best_score, best_state, best_epoch, since_best = score, snapshot(), epoch, 0
                else:
                    since_best += 1
                stop = None
                if epoch == settings.epochs:
                    stop = "epochs"
                elif val is not None and settings.patience is not None and since_best >= settings.patience:
                    stop = "early-stop"
                elif settings.max_seconds is not None:
                    late = time.monotonic() - start >= settings.max_seconds
                    stop = "time" if (_dist.from_main(late) if parallel else late) else None  # clocks differ
                if path is not None:
                    save(epoch, stop)
                if on_epoch is not None:
                    on_epoch(row)
                if stop is not None:
                    stopped = stop
                    break
        finally:
            if best_state is not None:
                module.load_state_dict(best_state)
            module.train(was_training)
    return FitReport(len(history), best_epoch, best_score, history, stopped, done)


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
    t = check_temperature(temperature)
    kind = loss_kind(task)
    if kind == "kl":
        return lambda s, ref: soft_target_loss(s, ref, t)
    return cosine_loss if kind == "cosine" else regression_loss


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
            raise PressoError(
                "Classification labels must be class indices (integers); got fractional values."
            )
        return F.cross_entropy(s, y.reshape(-1).long())

    def mse(s: Tensor, y: Tensor) -> Tensor:
        if y.numel() != s.numel():
            raise PressoError(
                f"Outputs {tuple(s.shape)} and labels {tuple(y.shape)} differ in size; "
                "fine-tune on labels only with one target per output value."
            )
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
