"""What a student learns from: rows, the teacher's outputs on them, and labels where known.

Rows: the calibration rows (a seeded part held back for early stopping), extra rows from a
file (``train_data``; the teacher labels them, so they need no labels), and mixup rows
labelled by the teacher; for a text model, a text file read lazily instead (see
:mod:`presso.techniques.distill.textstream`). The held-out evaluation rows are never
trained on: extra rows or lines equal to one of them are dropped. Teacher outputs on extra rows are cached on disk, keyed
by the rows and by the teacher's outputs on a few probe rows (a changed teacher misses).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from presso.errors import PressoError
from presso.files import atomic_path
from presso.techniques.base import StageContext
from presso.techniques.distill.textstream import TextStream, open_text_stream
from presso.techniques.recovery import mixup_inputs, split_indices, teacher_split

Inputs = dict[str, np.ndarray]
NO_LABEL = -1  # label of a row the data gives none for (extra and mixup rows)


@dataclass
class DistillData:
    """Training and validation rows with teacher outputs (``teacher``) and labels (``labels``,
    ``NO_LABEL`` where unknown; None when the task has no class labels)."""

    train: Inputs
    teacher: np.ndarray
    labels: np.ndarray | None
    val: Inputs | None
    val_teacher: np.ndarray | None
    val_labels: np.ndarray | None
    n_calibration: int
    n_extra: int
    n_mixed: int
    n_dropped: int  # extra rows dropped because they repeat evaluation rows
    stream: TextStream | None = None  # a text file read lazily (train_data of a text model)

    def describe(self) -> str:
        parts = [f"{self.n_calibration} calibration rows"]
        if self.stream is not None:
            s = self.stream
            parts.append(
                f"{len(s.keep)} texts streamed from {s.path.name} at their own length"
                + (f" ({s.n_heldout} skipped: they repeat held-out texts)" if s.n_heldout else "")
                + (", teacher outputs cached" if s.cached else "")
            )
        if self.n_extra:
            parts.append(
                f"{self.n_extra} extra rows labelled by the teacher"
                + (f" ({self.n_dropped} dropped: they repeat held-out rows)" if self.n_dropped else "")
            )
        if self.n_mixed:
            parts.append(f"{self.n_mixed} mixup rows labelled by the teacher")
        return " + ".join(parts)


def row_digests(inputs: Inputs) -> list[bytes]:
    """One digest per row over all inputs, to find repeated rows."""
    n = len(next(iter(inputs.values())))
    names = sorted(inputs)
    return [
        hashlib.sha1(b"".join(np.ascontiguousarray(inputs[k][i]).tobytes() for k in names)).digest()
        for i in range(n)
    ]


def without_rows(inputs: Inputs, labels: np.ndarray | None, banned: Inputs | None):
    """``inputs`` (and labels) minus the rows equal to a row of ``banned``; and how many went."""
    if banned is None:
        return inputs, labels, 0
    seen = set(row_digests({k: banned[k] for k in inputs}))
    keep = np.array([d not in seen for d in row_digests(inputs)])
    dropped = int((~keep).sum())
    if dropped == 0:
        return inputs, labels, 0
    return {k: v[keep] for k, v in inputs.items()}, None if labels is None else labels[keep], dropped


def teacher_cache_dir() -> Path:
    """Teacher outputs are cached beside the examples' weights (``PRESSO_CACHE_DIR`` moves both)."""
    from presso.cache import cache_root

    return cache_root() / "teacher-outputs"


def cached_teacher_outputs(
    teacher_fn: Callable[[Inputs], np.ndarray],
    inputs: Inputs,
    probe: Inputs,
    cache: Path | None,
    log: Callable[[str], None] = lambda _m: None,
) -> np.ndarray:
    """``teacher_fn(inputs)``, read from / written to ``cache`` when given.

    The key digests the rows and the teacher's outputs on ``probe`` rows: any change of
    the teacher's weights changes those outputs, so a stale file is never read."""
    if cache is None:
        return np.asarray(teacher_fn(inputs), np.float32)
    fingerprint = np.ascontiguousarray(np.asarray(teacher_fn(probe), np.float32)).round(5)
    h = hashlib.sha1(fingerprint.tobytes())
    for k in sorted(inputs):
        h.update(k.encode() + str(inputs[k].shape).encode() + np.ascontiguousarray(inputs[k]).tobytes())
    path = cache / f"{h.hexdigest()}.npy"
    if path.is_file():
        try:
            out = np.load(path, allow_pickle=False)
            if len(out) == len(next(iter(inputs.values()))):
                log(f"distill: teacher outputs read from the cache ({path})")
                return out
        except (OSError, ValueError):
            pass  # unreadable: computed again below
    out = np.asarray(teacher_fn(inputs), np.float32)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file: np.save would add ".npy" to tmp
            np.save(f, out, allow_pickle=False)
    except OSError:
        pass  # a read-only cache only costs speed
    return out


def _labels_for(ctx: StageContext, fraction: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The calibration labels of :func:`teacher_split`'s training and validation rows."""
    if ctx.labels is None or ctx.task != "classification":
        return None, None
    labels = np.asarray(ctx.labels).astype(np.int64).reshape(-1)
    train_idx, val_idx = split_indices(len(labels), fraction, ctx.seed)
    return labels[train_idx], labels[val_idx] if len(val_idx) else None


def distill_data(
    ctx: StageContext,
    *,
    validation_fraction: float,
    augment: int,
    extra: tuple[Inputs, np.ndarray | None] | None = None,
    cache: Path | None = None,
    text: Path | None = None,
) -> DistillData:
    """Rows for distillation in the stage's context (see the module docstring); ``text``: a
    file of texts for a text model, streamed (:mod:`presso.techniques.distill.textstream`)."""
    (train, teacher), val = teacher_split(ctx, validation_fraction, "distill")
    y_train, y_val = _labels_for(ctx, validation_fraction)
    teacher = np.asarray(teacher, np.float32)
    n_cal, n_extra, n_mixed, dropped = len(teacher), 0, 0, 0
    probe = {k: v[:4] for k, v in train.items()}

    def add(rows: Inputs, outputs: np.ndarray, labels: np.ndarray | None):
        nonlocal train, teacher, y_train
        train = {k: np.concatenate([v, rows[k].astype(v.dtype, copy=False)]) for k, v in train.items()}
        teacher = np.concatenate([teacher, outputs.reshape(len(outputs), *teacher.shape[1:])])
        if y_train is not None:
            fill = np.full(len(outputs), NO_LABEL, np.int64) if labels is None else labels.astype(np.int64)
            y_train = np.concatenate([y_train, fill.reshape(-1)])

    if extra is not None:
        rows, labels = extra
        missing = [k for k in train if k not in rows]
        if missing:
            raise PressoError(
                f"The distill stage's train_data lacks input '{missing[0]}'; it has "
                f"{', '.join(rows)}. Give rows with the model's inputs."
            )
        rows, labels, dropped = without_rows({k: rows[k] for k in train}, labels, ctx.evaluation_inputs)
        n_extra = len(next(iter(rows.values())))
        if n_extra:
            ctx.log(f"distill: labelling {n_extra} extra rows with the teacher")
            assert ctx.teacher_fn is not None  # the distill stage refuses a context without one
            add(
                rows,
                cached_teacher_outputs(ctx.teacher_fn, rows, probe, cache, ctx.log),
                labels if labels is not None and ctx.task == "classification" else None,
            )
    if augment and all(v.dtype.kind == "f" for v in train.values()):
        base = {k: v[: n_cal + n_extra] for k, v in train.items()}
        mixed = mixup_inputs(base, augment, ctx.seed)
        n_mixed = len(next(iter(mixed.values())))
        assert ctx.teacher_fn is not None  # the distill stage refuses a context without one
        add(mixed, np.asarray(ctx.teacher_fn(mixed), np.float32), None)
    stream = None
    if text is not None:
        assert ctx.teacher_fn is not None  # the distill stage refuses a context without one
        stream = open_text_stream(
            text,
            ctx.tokenizer,
            list(train),
            ctx.seq_len,
            ctx.teacher_fn,
            ctx.evaluation_inputs,
            cache,
            ctx.log,
            ctx.progress,
        )
    return DistillData(
        train,
        teacher,
        y_train,
        None if val is None else val[0],
        None if val is None else np.asarray(val[1], np.float32),
        y_val,
        n_cal,
        n_extra,
        n_mixed,
        dropped,
        stream,
    )
