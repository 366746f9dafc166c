"""A compression run made ready: the model loaded, its data split, the original model's
reference outputs taken and its fp32 ONNX baseline exported and checked.

Everything a run measures is measured against what :func:`prepare` fixes here, once: a
search runs many recipes on one prepared run.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from typing_extensions import Unpack

from presso.data.dataset import Dataset, split
from presso.data.resolve import resolve_data
from presso.data.sample import DEFAULT_MEMORY_BUDGET
from presso.errors import PressoError, reason
from presso.export.compact import compact_names
from presso.export.onnx_export import check_parity, export_onnx
from presso.measure.bench import BenchSettings
from presso.measure.metrics import check_target, evaluate, unresolved_budget
from presso.model.loaded import LoadedModel
from presso.model.onnx_file import keep_output
from presso.model.sources import load_model
from presso.progress import SILENT, Progress
from presso.recipe.order import check_stage_order
from presso.recipe.schema import Recipe, Settings
from presso.runtime.onnx_files import copy_onnx
from presso.runtime.session import make_session, run_session
from presso.tasks import drop, get_task, primary_metric

# Quality is measured one row at a time, as a real-time service runs the model: with
# dynamic quantization a row's output depends on the other rows of its batch (the
# activation range is computed per batch), so batched figures would not be the ones
# a user gets at batch 1.
EVAL_BATCH = 1


@dataclass
class Run:
    """What the flow knows about one compression run, shared by its steps."""

    model: LoadedModel
    task: str
    max_drop: float
    data: Dataset
    calibration: Dataset
    evaluation: Dataset
    split_info: dict
    ref_cal: np.ndarray  # original model's outputs on the calibration rows
    ref_eval: np.ndarray  # ... and on the held-out evaluation rows
    y_cal: np.ndarray | None
    y_eval: np.ndarray | None
    workdir: Path
    bench: BenchSettings
    progress: Progress
    baseline_eval: np.ndarray | None = None  # the fp32 ONNX baseline's held-out outputs
    seq_len: int = 128  # token length of text rows (extra text for a stage is tokenized alike)
    # Parts of the data too small for the budget: one changed row already breaks it there.
    unresolved: list[str] = field(default_factory=list)
    export_max_abs_diff: float | None = None  # PyTorch vs the exported baseline, held-out rows
    # The metric the budget applies to (--metric, else the task's default for this data).
    metric: str = ""

    @property
    def primary(self) -> str:
        return self.metric or primary_metric(self.task, self.evaluation.has_labels)

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` on the budget's metric, in its terms."""
        return drop(self.primary, baseline, value)

    def metrics(self, outputs: np.ndarray, on: str) -> dict[str, float]:
        if on == "calibration":
            part, ref, y = self.calibration, self.ref_cal, self.y_cal
        else:
            part, ref, y = self.evaluation, self.ref_eval, self.y_eval
        return evaluate(self.task, outputs, ref, y, part.inputs, part.groups)

    def baseline_metrics(self) -> dict[str, float]:
        """The fp32 baseline's metrics on the held-out rows."""
        assert self.baseline_eval is not None  # prepare() sets it before it hands the run out
        return self.metrics(self.baseline_eval, "evaluation")


@dataclass
class Prepared:
    """A model and its data made ready once: reference outputs, split, fp32 ONNX baseline.

    :func:`compress` runs one recipe on it; a search runs many (the teacher's outputs are
    computed once, not per trial). ``close()`` removes its working folder."""

    run: Run
    baseline: Path | None
    seed: int
    calibration_fraction: float

    def close(self) -> None:
        shutil.rmtree(self.run.workdir, ignore_errors=True)

    def temporary_files(self) -> contextlib.AbstractContextManager[None]:
        """While open, Python's temporary files go into this run's working folder."""
        return temporary_files_in(self.run.workdir)


# The temporary folder before the outermost redirection: new work folders go there, never
# inside another run's (which is removed with that run).
_OUTER: list[str] = []


_OWNED: dict[Path, int] = {}  # this process's work folders -> the descriptor holding their lock


def new_workdir() -> Path:
    """A new ``presso-work-*`` folder in the system's temporary folder, held by this process
    (a lock on its ``.owner`` file) while it lives. Work folders whose run was killed without
    a chance to clean up (SIGKILL, a power cut) hold no lock any more: they are removed here."""
    parent = Path(_OUTER[0] if _OUTER else tempfile.gettempdir())
    _remove_abandoned(parent)
    folder = Path(tempfile.mkdtemp(prefix="presso-work-", dir=parent))
    fd = _locked_owner_file(folder)
    if fd is not None:
        _OWNED[folder] = fd
    return folder


def _locked_owner_file(folder: Path) -> int | None:
    """Lock a new file and only then name it ``.owner``: a sweeper never finds it unlocked."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): folders are only removed by their own run
        return None
    draft = folder / ".owner.draft"
    fd = os.open(draft, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(draft, folder / ".owner")
    return fd


def _remove_abandoned(parent: Path) -> None:
    try:
        import fcntl
    except ImportError:
        return
    for folder in parent.glob("presso-work-*"):
        if folder in _OWNED:
            if not folder.exists():  # removed by its run: let go of its lock
                os.close(_OWNED.pop(folder))
            continue
        try:
            fd = os.open(folder / ".owner", os.O_RDWR)
        except OSError:  # no owner file (another user's, or a run of an older presso): not ours to judge
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its run is alive
            os.close(fd)
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def temporary_files_in(workdir: Path) -> Iterator[None]:
    """Redirect Python's temporary files into ``workdir/tmp`` while the run works.

    ONNX Runtime's quantizer, its transformer optimizer and shape inference, and the
    exporter make their own temporary folders through :mod:`tempfile`, in the system's
    temporary folder: a run killed mid-way left them there (3.3 GB for BERT-base). Inside
    the work folder they go when the run's folder goes: on success, failure, Ctrl-C or
    SIGTERM (the CLI turns it into an exception, so this cleanup runs).
    """
    folder = workdir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    before = tempfile.tempdir
    _OUTER.append(tempfile.gettempdir())
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before
        _OUTER.pop()


class RunOptions(TypedDict, total=False):
    """The run settings as keyword arguments of compress / distill / search / prepare."""

    task: str | None
    max_drop: float | None
    metric: str | None
    target: str | None
    group: str | None
    weights: str | Path | None
    seed: int | None
    calibration_fraction: float | None
    seq_len: int
    bench: BenchSettings | None
    output: str | None
    train_texts: str | Path | None
    data_memory: int | None


@dataclass(frozen=True)
class RunSettings:
    """How a run reads its data and judges and times its result: one definition for
    :func:`presso.compress`, :func:`presso.distill`, ``presso.search`` and their CLIs.

    task
        classification, regression, forecast, anomaly or embedding; inferred if obvious.
    max_drop
        Largest allowed drop of the budget's metric on held-out rows (default 0.01): an
        absolute drop of a score (one point of accuracy, ROC-AUC, NDCG@10, mean cosine), a
        relative increase of an error (1% more MAE, RMSE or MAPE); see :mod:`presso.tasks`.
    metric
        The metric the budget applies to (default per task: accuracy, or balanced accuracy
        on imbalanced classes; MAE; ROC-AUC; mean cosine; NDCG@10), any the task reports.
    target
        The label column of a table file (csv / parquet).
    group
        The query / session id column of a table file, for ranking (an .npz: array 'group').
    weights
        A state dict for a factory model ``"file.py:fn"``.
    seed, calibration_fraction
        The seeded split of the rows into calibration rows (default 0.3) and held-out rows.
    seq_len
        Token length of text rows.
    bench
        Timing rounds, throughput batch and threads (:class:`presso.BenchSettings`).
    output
        Which output of the model to compress for: a dict / ModelOutput key or a tuple index
        of forward's result, a graph output name of an ONNX file (default: the first).
    train_texts
        A ``.txt`` file of unlabeled texts (one a line, any size) for a text model: a
        ``distill`` stage without its own ``train_data`` streams it (the ``fast`` recipe's
        encoder student, ``--recipe auto``'s students), labelled by the teacher.
    data_memory
        Bytes of rows a run keeps from a data file (default 2 GB): a larger file is streamed
        and a seeded uniform sample of its rows that fits is used (the report says how many).
    """

    task: str | None = None
    max_drop: float | None = None
    metric: str | None = None
    target: str | None = None
    group: str | None = None
    weights: str | Path | None = None
    seed: int | None = None
    calibration_fraction: float | None = None
    seq_len: int = 128
    bench: BenchSettings | None = None
    output: str | None = None
    train_texts: str | Path | None = None
    data_memory: int | None = None

    def __post_init__(self) -> None:
        """Values no run can use are refused here, before the model is even loaded (the
        CLI builds these settings from its options first)."""
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise PressoError(
                f"--max-drop (max_drop) must be a finite number >= 0 (an allowed drop of the "
                f"primary metric). Got {self.max_drop}."
            )
        if self.calibration_fraction is not None and not 0 < self.calibration_fraction < 1:
            raise PressoError(
                "--calibration-fraction (calibration_fraction) must be between 0 and 1, e.g. 0.3. "
                f"Got {self.calibration_fraction}."
            )
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise PressoError(f"--seed (seed) must be an integer from 0 to 2**32 - 1. Got {self.seed}.")
        if self.seq_len < 1:
            raise PressoError(f"--seq-len (seq_len) must be >= 1 tokens. Got {self.seq_len}.")
        if self.data_memory is not None and self.data_memory < 1:
            raise PressoError(f"--data-memory (data_memory) must be a positive size. Got {self.data_memory}.")

    @classmethod
    def of(cls, base: RunSettings | None, options: Mapping[str, Any], where: str) -> RunSettings:
        """``base`` (or the defaults) with ``options`` given as keywords on top."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PressoError(
                f"{where}() got an unknown option '{unknown[0]}'{hint}. Run options: {', '.join(known)}."
            )
        return replace(base or cls(), **options)


def _train_texts(path: str | Path, loaded: LoadedModel):
    """The data's further training texts: ``path``, checked before any slow work."""
    file = Path(path)
    if loaded.tokenizer is None:
        raise PressoError(
            f"--train-texts {path}: this model takes no text (no tokenizer); give extra rows to "
            "presso distill --train-data instead."
        )
    if file.suffix.lower() != ".txt":
        raise PressoError(f"--train-texts {path}: give a .txt file, one text a line.")
    if not file.is_file():
        raise PressoError(f"--train-texts {path}: no such file.")
    return lambda: file


def prepare(
    model: Any,
    data: Any = None,
    *,
    settings: RunSettings | None = None,
    recipe: Recipe | None = None,
    progress: Progress = SILENT,
    **options: Unpack[RunOptions],
) -> Prepared:
    """Load ``model`` and ``data``, take the original model's outputs, split the rows and
    export the baseline; ``recipe`` (optional) is checked against the model before any of
    the slow work. Run settings come from ``settings`` and keywords (:class:`RunSettings`),
    then from the recipe's own ``settings``, then the defaults."""
    run = RunSettings.of(settings, options, "prepare")
    pinned = recipe.settings if recipe is not None else Settings()
    seed = _first(run.seed, pinned.seed, 0)
    calibration_fraction = _first(run.calibration_fraction, pinned.calibration_fraction, 0.3)
    task, max_drop, seq_len = run.task or pinned.task, run.max_drop, run.seq_len
    metric = run.metric or pinned.metric
    progress.log("loading the model")
    loaded = load_model(model, weights=run.weights, output=run.output)
    data = resolve_data(
        data,
        loaded,
        target=run.target,
        seq_len=seq_len,
        group=run.group,
        memory_budget=run.data_memory or DEFAULT_MEMORY_BUDGET,
        seed=seed,
    )
    if data.sample is not None:
        progress.log(data.sample.said(data.source, len(data)))
    if run.train_texts is not None:
        data = replace(data, train_texts=_train_texts(run.train_texts, loaded))
    if recipe is not None:
        check_stage_order(recipe, recipe.configs(), loaded)
    workdir = new_workdir()
    try:
        with temporary_files_in(workdir):
            made = _prepare(
                loaded,
                data,
                task,
                max_drop,
                pinned,
                seed,
                calibration_fraction,
                workdir,
                run.bench or BenchSettings(),
                progress,
                seq_len,
                metric,
            )
            return Prepared(made, _baseline(made), seed, calibration_fraction)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _first(*values):
    return next(v for v in values if v is not None)


def _prepare(
    loaded: LoadedModel,
    data: Dataset,
    task: str | None,
    max_drop: float | None,
    settings: Settings,
    seed: int,
    calibration_fraction: float,
    workdir: Path,
    bench: BenchSettings,
    progress: Progress,
    seq_len: int = 128,
    metric: str | None = None,
) -> Run:
    """Check the data fits the model, take reference outputs, split, settle the task."""
    if task == "ranking" and (data.groups is None or data.target is None):
        raise PressoError(
            "Ranking needs graded relevance labels and the query id of each row: give --target "
            "COLUMN and --group COLUMN (an .npz: arrays 'y' and 'group')."
        )
    progress.log("running the original model on the data")
    try:
        _reference_outputs(loaded, data.head(2))
    except PressoError:
        raise
    except Exception as exc:
        shapes = {k: list(v.shape[1:]) for k, v in data.inputs.items()}
        msg = reason(exc, 200)
        raise PressoError(
            f"The data does not fit the model: {msg}. Data rows have shapes {shapes} "
            f"for inputs {loaded.input_names}; reshape the data to what the model expects."
        ) from exc
    # References come from the original model before anything is exported (exporting
    # can alter a live model, measured).
    reference = _reference_outputs(loaded, data)
    task = task or _infer_task(loaded, data, reference)
    spec = get_task(task)
    max_drop = _first(max_drop, settings.max_drop, spec.default_max_drop)
    if max_drop < 0:
        raise PressoError(f"--max-drop must be >= 0 (an allowed drop of the primary metric). Got {max_drop}.")
    target = None if data.target is None else check_target(task, reference, data.target)
    if target is not None:
        data = replace(data, target=target)
    parts = split(data, calibration_fraction, seed)
    split_info = {**parts.describe(), "evaluation_batch": EVAL_BATCH}
    metric = _budget_metric(task, metric, reference[parts.evaluation_index], parts.evaluation, data.target)
    unresolved = unresolved_budget(
        metric,
        float(max_drop),
        {"calibration": len(parts.calibration), "held-out": len(parts.evaluation)},
        {"calibration": parts.calibration.target, "held-out": parts.evaluation.target}
        if task == "classification"
        else None,
    )
    for line in unresolved:
        progress.warn(line)
    return Run(
        model=loaded,
        task=task,
        max_drop=float(max_drop),
        data=data,
        calibration=parts.calibration,
        evaluation=parts.evaluation,
        split_info=split_info,
        ref_cal=reference[parts.calibration_index],
        ref_eval=reference[parts.evaluation_index],
        y_cal=parts.calibration.target,
        y_eval=parts.evaluation.target,
        workdir=workdir,
        bench=bench,
        progress=progress,
        seq_len=seq_len,
        unresolved=unresolved,
        metric=metric,
    )


def _budget_metric(
    task: str, metric: str | None, ref_eval: np.ndarray, evaluation: Dataset, target: np.ndarray | None
) -> str:
    """The metric the budget applies to: the user's (checked against those the task reports
    on the held-out rows) or the task's default; for classes imbalanced over all the rows
    (not one part of the split), balanced accuracy."""
    available = None
    if metric is not None:
        available = evaluate(
            task, ref_eval, ref_eval, evaluation.target, evaluation.inputs, evaluation.groups
        )
    labels = target if task == "classification" else None
    return primary_metric(
        task,
        evaluation.has_labels,
        metric=metric,
        available=available,
        labels=None if labels is None else np.asarray(labels).tolist(),
        n_classes=ref_eval.shape[1] if labels is not None and ref_eval.ndim == 2 else None,
    )


def _reference_outputs(loaded: LoadedModel, data: Dataset) -> np.ndarray:
    out = loaded.run(data.inputs)
    if not np.all(np.isfinite(out)):
        raise PressoError("The original model returns NaN/inf on this data; check the data's scale.")
    return out


def _infer_task(loaded: LoadedModel, data: Dataset, outputs: np.ndarray) -> str:
    if loaded.task_hint:
        return loaded.task_hint
    y = data.target
    if y is not None and outputs.ndim == 2 and outputs.shape[1] >= 2:
        if np.all(np.mod(y, 1) == 0) and y.ndim == 1 and 0 <= y.min() and y.max() < outputs.shape[1]:
            return "classification"
    if y is not None and np.issubdtype(np.asarray(y).dtype, np.floating):
        return "regression"
    raise PressoError(
        "Cannot infer the task from this model and data. Pass --task "
        "classification|regression|forecast|anomaly|embedding|ranking."
    )


def _baseline(run: Run) -> Path | None:
    """The fp32 ONNX model everything is compared with, checked against PyTorch; None for a
    callable teacher, which is measured as it is (its own predict)."""
    path = run.workdir / "baseline.onnx"
    if run.model.kind == "callable":
        run.baseline_eval = run.ref_eval
        return None
    if run.model.module is None:
        assert run.model.onnx_path is not None  # neither a module nor a callable: an ONNX file
        copy_onnx(run.model.onnx_path, path)
        if run.model.output is not None:
            keep_output(path, run.model.output)
        compact_names(path)
        run.baseline_eval = run.ref_eval
        return path
    run.progress.log("exporting the original model to ONNX")
    export_onnx(run.model, run.calibration.head(2).inputs, path)
    compact_names(path)  # the baseline gets the same storage treatment as the result
    try:
        out = run_session(make_session(path), run.evaluation.inputs, EVAL_BATCH)
    except Exception as exc:
        raise PressoError(f"The exported ONNX model does not run on ONNX Runtime: {exc}") from exc
    run.export_max_abs_diff = check_parity(run.ref_eval, out, "ONNX export")
    run.baseline_eval = out
    return path
