"""The compression flow: load -> reference -> export -> transform -> verify -> measure.

Reading :func:`compress` top to bottom shows how a model moves through presso. The
baseline and the compressed model are measured by the same functions, in the same
process, on the same held-out rows.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from presso.data.dataset import Dataset, split
from presso.data.resolve import resolve_data
from presso.errors import BudgetError, NothingToDo, PressoError
from presso.export.compact import compact_names
from presso.export.onnx_export import check_parity, export_onnx
from presso.measure.bench import (
    BenchSettings,
    Timing,
    bench_onnx,
    bench_torch,
    bench_with_callable,
    time_latency,
)
from presso.measure.memory import peak_memory_mb
from presso.measure.metrics import check_target, evaluate, unresolved_budget
from presso.measure.size import callable_size, file_size, layer_sizes, layer_storage_bytes, parameter_count
from presso.model.loaded import LoadedModel
from presso.model.sources import load_model
from presso.progress import SILENT, Progress
from presso.recipe.checkpoint import RunCheckpoint, StageOutcome, run_fingerprint
from presso.recipe.result import CompressionResult
from presso.recipe.schema import Recipe, Settings, Stage, load_recipe
from presso.report.build import build_report
from presso.runtime.session import make_session, run_session
from presso.tasks import get_task, primary_metric
from presso.techniques.base import Candidate, Score, StageContext
from presso.techniques.registry import get_technique

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

    @property
    def primary(self) -> str:
        return primary_metric(self.task, self.evaluation.has_labels)

    def metrics(self, outputs: np.ndarray, on: str) -> dict[str, float]:
        if on == "calibration":
            return evaluate(self.task, outputs, self.ref_cal, self.y_cal, self.calibration.inputs)
        return evaluate(self.task, outputs, self.ref_eval, self.y_eval, self.evaluation.inputs)


def compress(
    model: Any,
    recipe: str | Path | Recipe = "int8",
    data: Any = None,
    *,
    task: str | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    weights: str | Path | None = None,
    seed: int | None = None,
    calibration_fraction: float | None = None,
    seq_len: int = 128,
    bench: BenchSettings | None = None,
    progress: Progress = SILENT,
    pack: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> CompressionResult:
    """Compress ``model`` with ``recipe`` and measure it against the original.

    Parameters
    ----------
    model : nn.Module, str or Path
        A PyTorch module, an ``.onnx`` file, a Hugging Face model folder, or a factory
        ``"file.py:fn"`` / ``"package.module:fn"`` (with ``weights=`` a state dict).
    recipe : str, Path or Recipe
        A built-in recipe name (``presso recipes`` lists them) or a recipe YAML file.
    data : path, arrays, (X, y), list of texts or Dataset
        Rows the model was not trained on. They are split (seeded) into calibration
        rows and held-out evaluation rows; every reported metric uses the latter.
    task : str, optional
        classification, regression, forecast, anomaly or embedding; inferred if obvious.
    max_drop : float, optional
        Largest allowed absolute drop of the task's primary metric (default per task,
        0.01: one accuracy point, 0.01 of R^2, ROC-AUC or mean cosine).
    pack : bool
        Also write the packed storage file (``model.packed``: sparse + low-bit +
        entropy-coded weights) and report its size; recipes with a ``pack`` stage do.
    checkpoint : path, optional
        A folder where each finished stage is kept, so an interrupted run can resume;
        removed when the run completes. An existing one is refused unless ``resume``.
    resume : bool
        Continue the run whose checkpoint is at ``checkpoint`` from its last finished stage.

    Returns
    -------
    CompressionResult
        ``.report`` (the evidence), ``.model_path`` and ``.save(dir)``.

    Examples
    --------
    >>> import presso
    >>> ex = presso.load_example("tabular")
    >>> result = presso.compress(ex.model, "int8", data=ex.data, task=ex.task)  # doctest: +SKIP
    >>> result.save("tabular-int8")  # doctest: +SKIP
    """
    recipe = load_recipe(recipe)
    prepared = prepare(
        model,
        data,
        settings=recipe.settings,
        recipe=recipe,
        task=task,
        max_drop=max_drop,
        target=target,
        weights=weights,
        seed=seed,
        calibration_fraction=calibration_fraction,
        seq_len=seq_len,
        bench=bench,
        progress=progress,
    )
    try:
        return run_recipe(prepared, recipe, pack=pack, checkpoint=checkpoint, resume=resume)
    except BaseException:
        prepared.close()
        raise


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


def prepare(
    model: Any,
    data: Any = None,
    *,
    settings: Settings | None = None,
    recipe: Recipe | None = None,
    task: str | None = None,
    max_drop: float | None = None,
    target: str | None = None,
    weights: str | Path | None = None,
    seed: int | None = None,
    calibration_fraction: float | None = None,
    seq_len: int = 128,
    bench: BenchSettings | None = None,
    progress: Progress = SILENT,
) -> Prepared:
    """Load ``model`` and ``data``, take the original model's outputs, split the rows and
    export the baseline; ``recipe`` (optional) is checked against the model before any of
    the slow work."""
    settings = settings or Settings()
    seed = _first(seed, settings.seed, 0)
    calibration_fraction = _first(calibration_fraction, settings.calibration_fraction, 0.3)
    progress.log("loading the model")
    loaded = load_model(model, weights=weights)
    data = resolve_data(data, loaded, target=target, seq_len=seq_len)
    if recipe is not None:
        _check_stage_order(recipe, recipe.configs(), loaded)
    workdir = Path(tempfile.mkdtemp(prefix="presso-work-"))
    try:
        run = _prepare(
            loaded,
            data,
            task or settings.task,
            max_drop,
            settings,
            seed,
            calibration_fraction,
            workdir,
            bench or BenchSettings(),
            progress,
            seq_len,
        )
        return Prepared(run, _baseline(run), seed, calibration_fraction)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


@dataclass
class StagesRun:
    """What running a recipe's stages left: the final model and what each stage did."""

    path: Path
    outcomes: list[StageOutcome]
    metrics: dict  # the final model's metrics on the held-out rows
    stage_reports: list[dict]
    notes: list[str]
    steps: list[tuple]  # (name, technique, path, metrics, skipped) per step, for the waterfall


@contextmanager
def transformer_kept(model: LoadedModel):
    """Run stages that may slim or distil a transformer (they change ``model.transformer``,
    its heads and widths, in place) and leave the model's description as it was: a search
    runs many recipes on one prepared model."""
    before = copy.deepcopy(model.transformer)
    try:
        yield
    finally:
        if before is not None:
            model.transformer.clear()
            model.transformer.update(before)


def run_stages(
    run: Run, recipe: Recipe, baseline_path: Path | None, seed: int, saved: RunCheckpoint | None = None
) -> StagesRun:
    """Run the recipe's model-changing stages in order (budget checked after each), then
    store mostly-zero weights sparsely. Storage stages (pack) are left to the caller."""
    stages = recipe.configs()
    outcomes: list[StageOutcome] = []
    current, module = baseline_path, run.model.module  # the PyTorch model torch stages train
    for index, ((technique, config), spec) in enumerate(zip(stages, recipe.stages, strict=True), 1):
        if technique.domain == "storage":
            continue  # packing works on the final model, after every other stage
        if saved is not None and index <= saved.finished:
            outcome = saved.restore(index, run.workdir)
            run.progress.log(f"stage {index}/{len(stages)}: {technique.name} restored from the checkpoint")
        else:
            outcome = _run_stage(run, index, len(stages), technique, config, spec, current, module, seed)
            if saved is not None:
                saved.save(index, outcome)
        outcomes.append(outcome)
        if outcome.transformer is not None:
            run.model.transformer.clear()
            run.model.transformer.update(outcome.transformer)
        if not outcome.skipped:
            current = outcome.path
            module = outcome.module if technique.domain == "torch" else None
    if all(o.skipped for o in outcomes):
        raise BudgetError(
            f"Every stage of recipe '{recipe.name}' was skipped, so there is no compressed "
            "model. Raise --max-drop or try another recipe."
        )
    compact_names(current)
    eval_metrics = next(o.metrics for o in reversed(outcomes) if not o.skipped)
    stage_reports = [o.report for o in outcomes]
    notes = list(run.model.notes) + [n for o in outcomes for n in o.notes]
    steps = [
        (f"{i} {o.technique}", o.technique, o.path, o.metrics, o.skipped) for i, o in enumerate(outcomes, 1)
    ]
    if any(t.sparse for (t, _), o in zip(stages, outcomes, strict=False) if not o.skipped):
        current, storage = _store_sparse(run, current)  # a scan of every weight: only where zeros were made
        if storage is not None:
            stage_reports.append(storage)
            notes += storage["notes"]
            steps.append(("sparse storage", "sparse-storage", current, eval_metrics, False))
    return StagesRun(current, outcomes, eval_metrics, stage_reports, notes, steps)


def run_recipe(
    prepared: Prepared,
    recipe: Recipe,
    *,
    pack: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> CompressionResult:
    """Run ``recipe`` on a prepared model, measure the result against the baseline and
    return it; the result owns ``prepared.run.workdir`` from then on."""
    run, seed, calibration_fraction = prepared.run, prepared.seed, prepared.calibration_fraction
    progress = run.progress
    saved = None
    try:
        if checkpoint is not None:
            saved = RunCheckpoint.open(
                checkpoint, _fingerprint(run, recipe, seed, calibration_fraction), resume
            )
            if resume:
                progress.log(
                    f"resuming after stage {saved.finished} (checkpoint {checkpoint})"
                    if saved.finished
                    else f"no finished stage in {checkpoint}: starting from the first stage"
                )
        done = run_stages(run, recipe, prepared.baseline, seed, saved)
        pack = pack or any(t.domain == "storage" for t, _ in recipe.configs())
        resolved = resolved_recipe(recipe, done.outcomes, run, seed, calibration_fraction)
        report, packed_path = _measure(
            run,
            prepared.baseline,
            done.path,
            done.metrics,
            resolved,
            done.stage_reports,
            done.notes,
            done.steps,
            pack,
        )
        if saved is not None:
            saved.remove()  # the run is complete: nothing left to resume
        return CompressionResult(
            report=report,
            model_path=done.path,
            workdir=run.workdir,
            tokenizer=run.model.tokenizer,
            recipe=resolved,
            packed_path=packed_path,
        )
    except PressoError:
        # The run ended with an answer (bad input, budget not met): nothing to resume. Only an
        # interruption (Ctrl-C, a killed process) leaves the checkpoint behind.
        if saved is not None:
            saved.remove()
        raise


def _run_stage(
    run: Run, index: int, count: int, technique, config, spec: Stage, current: Path | None, module, seed: int
) -> StageOutcome:
    """Run one stage on ``current`` and verify its best variant on the held-out rows.

    An ``optional`` stage with no variant within budget, or a stage whose result does not
    pay off (``keep_if``), is skipped: the run goes on with the model it had."""
    stage_dir = run.workdir / f"stage{index}-{technique.name}"
    stage_dir.mkdir()
    torch_stage = technique.domain == "torch"
    transformer_before = copy.deepcopy(run.model.transformer)  # slim / distill change it in place
    ctx = _stage_context(run, stage_dir, module if torch_stage else None, seed, torch_stage)
    tried: list[Candidate] = []
    try:
        with run.progress.task(f"stage {index}/{count}: {technique.name}"):
            result = technique.apply(current, config, ctx)
        tried = result.tried
        chosen, eval_metrics = _verify(run, result.ranked, result.tried, technique.name)
    except (BudgetError, NothingToDo) as exc:
        if not spec.optional:
            raise
        reason = (
            "no variant within the budget"
            if isinstance(exc, BudgetError)
            else str(exc).split(" (", 1)[0].split(": ", 1)[-1]
        )
        return _skipped(run, technique.name, index, reason, tried, transformer_before)
    reason = _not_paying(run, spec.keep_if, current, chosen.path)
    if reason:
        return _skipped(run, technique.name, index, reason, result.tried, transformer_before)
    layers = chosen.layers if chosen.layers is not None else result.layers
    report = {
        "technique": technique.name,
        "chosen": chosen.name,
        "variants": [c.describe() for c in result.tried],
        "notes": result.notes + chosen.notes,
        "layers": _with_storage(layers, chosen.path),
    }
    options = config.model_dump(mode="json")
    options.update(chosen.options)
    pinned = {**spec.model_dump(mode="json", exclude_defaults=True), "options": options}
    return StageOutcome(
        technique.name,
        report,
        chosen.path,
        chosen.module if torch_stage else None,
        eval_metrics,
        pinned,
        result.notes + chosen.notes,
        copy.deepcopy(run.model.transformer),
    )


def _skipped(
    run: Run, technique: str, index: int, reason: str, tried: list[Candidate], transformer_before: dict | None
) -> StageOutcome:
    if transformer_before is not None:
        run.model.transformer.clear()
        run.model.transformer.update(transformer_before)
    note = f"stage {index} '{technique}' skipped: {reason}; the run goes on with the model before it"
    run.progress.log(note)
    report = {
        "technique": technique,
        "chosen": None,
        "skipped": True,
        "variants": [c.describe() for c in tried],
        "notes": [note],
        "layers": [],
    }
    return StageOutcome(technique, report, None, notes=[note], transformer=transformer_before)


def _not_paying(run: Run, keep_if: str, before: Path | None, after: Path) -> str | None:
    """Why a stage's result is not kept under ``keep_if`` (None: keep it)."""
    if keep_if == "always" or before is None:
        return None
    if keep_if == "smaller":
        b, a = file_size(before), file_size(after)
        return None if a < b else f"its file is not smaller ({a:,} vs {b:,} bytes; keep_if: smaller)"
    with run.progress.task("timing the stage's result against its input (interleaved rounds)"):
        t = time_latency({"before": before, "after": after}, run.evaluation.head(1).inputs, run.bench)
    after_ms, before_ms = t["after"].p50_ms, t["before"].p50_ms
    faster_rounds = sum(a < b for a, b in zip(t["after"].rounds_ms, t["before"].rounds_ms, strict=True))
    # A gain within timing noise is no gain: the stage must win by 3% and in most rounds.
    if after_ms < before_ms * (1 - _KEEP_MARGIN) and faster_rounds > len(t["after"].rounds_ms) / 2:
        return None
    return (
        f"not faster than its input at batch 1 ({after_ms:.4f} vs {before_ms:.4f} ms p50, faster in "
        f"{faster_rounds} of {len(t['after'].rounds_ms)} interleaved rounds; keep_if: faster)"
    )


_KEEP_MARGIN = 0.03


def _fingerprint(run: Run, recipe: Recipe, seed: int, calibration_fraction: float) -> str:
    settings = {
        "task": run.task,
        "max_drop": run.max_drop,
        "seed": seed,
        "seq_len": run.seq_len,
        "calibration_fraction": calibration_fraction,
    }
    arrays = [*run.data.inputs.values(), run.ref_cal, run.ref_eval]
    if run.data.target is not None:
        arrays.append(np.asarray(run.data.target))
    return run_fingerprint(recipe.model_dump_json(), settings, arrays)


def _check_stage_order(recipe: Recipe, stages, loaded: LoadedModel) -> None:
    """Stages that train the PyTorch model need one, and must run before ONNX stages;
    storage stages come last, after at least one stage that changes the model."""
    storage = [i for i, (t, _) in enumerate(stages, 1) if t.domain == "storage"]
    if storage and (storage[0] == 1 or storage[-1] != len(stages) or len(storage) > 1):
        i = storage[0] if storage[0] == 1 or len(storage) > 1 else storage[-1]
        raise PressoError(
            f"Recipe '{recipe.name}' stage {i} '{stages[i - 1][0].name}' stores the final model, "
            "so it must be the last stage, once, after a stage that compresses the model "
            "(or pass --packed to any recipe)."
        )
    torch_stages = [(i, t.name) for i, (t, _) in enumerate(stages, 1) if t.domain == "torch"]
    if loaded.kind != "torch":
        # A student with its own architecture (distill: student mlp / a factory) can learn from
        # an ONNX file or a callable; every stage after it works on that student.
        first, config = stages[0] if stages else (None, None)
        needs_module = getattr(config, "needs_teacher_module", None)  # None: not a distill stage
        what = "an ONNX file" if loaded.kind == "onnx" else "a Python callable"
        if needs_module:
            raise PressoError(
                f"Recipe '{recipe.name}' stage 1 '{first.name}': student: auto derives the student "
                f"from the teacher's PyTorch architecture, and this teacher is {what}. Use "
                "student: mlp (flat rows) or your own student factory file.py:fn."
            )
        if needs_module is None and loaded.kind == "callable":
            raise PressoError(
                f"Recipe '{recipe.name}' cannot start from {what}: presso can only distil a "
                "student from it. Use a recipe whose first stage is distill with student: mlp "
                "or a factory (e.g. presso distill MODEL --student mlp)."
            )
        if needs_module is None and torch_stages:
            i, name = torch_stages[0]
            raise PressoError(
                f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model; it needs "
                "a PyTorch model or Hugging Face folder, not an ONNX file (or a distill stage "
                "first with student: mlp or a factory)."
            )
    first_onnx = next((i for i, (t, _) in enumerate(stages, 1) if t.domain == "onnx"), None)
    late = [(i, n) for i, n in torch_stages if first_onnx is not None and i > first_onnx]
    if late:
        i, name = late[0]
        raise PressoError(
            f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model, so it must "
            f"come before stage {first_onnx} '{stages[first_onnx - 1][0].name}', which works "
            "on the exported ONNX graph. Reorder the stages."
        )


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
) -> Run:
    """Check the data fits the model, take reference outputs, split, settle the task."""
    progress.log("running the original model on the data")
    try:
        _reference_outputs(loaded, data.head(2))
    except PressoError:
        raise
    except Exception as exc:
        shapes = {k: list(v.shape[1:]) for k, v in data.inputs.items()}
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
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
        data = Dataset(inputs=data.inputs, target=target, source=data.source, texts=data.texts)
    parts = split(data, calibration_fraction, seed)
    split_info = {**parts.describe(), "evaluation_batch": EVAL_BATCH}
    unresolved = unresolved_budget(
        primary_metric(task, parts.evaluation.has_labels),
        float(max_drop),
        {"calibration": len(parts.calibration), "held-out": len(parts.evaluation)},
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
        "classification|regression|forecast|anomaly|embedding."
    )


def _baseline(run: Run) -> Path | None:
    """The fp32 ONNX model everything is compared with, checked against PyTorch; None for a
    callable teacher, which is measured as it is (its own predict)."""
    path = run.workdir / "baseline.onnx"
    if run.model.kind == "callable":
        run.baseline_eval = run.ref_eval
        return None
    if run.model.module is None:
        shutil.copyfile(run.model.onnx_path, path)
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
    run.split_info["export_max_abs_diff"] = check_parity(run.ref_eval, out, "ONNX export")
    run.baseline_eval = out
    return path


def _stage_context(run: Run, stage_dir: Path, module, seed: int, torch_stage: bool) -> StageContext:
    baseline_cal = run.metrics(run.ref_cal, "calibration")[run.primary]

    def score_outputs(out: np.ndarray) -> Score:
        metrics = run.metrics(np.asarray(out), "calibration")
        value = metrics[run.primary]
        drop = baseline_cal - value
        return Score(run.primary, value, drop, drop <= run.max_drop + 1e-12, metrics)

    def score(path: Path) -> Score:
        return score_outputs(run_session(make_session(path), run.calibration.inputs, EVAL_BATCH))

    def time_models(paths: dict[str, Path]) -> dict[str, Timing]:
        quick = BenchSettings(rounds=6, round_seconds=0.1, threads=run.bench.threads)
        with run.progress.task("timing variants"):
            return time_latency(paths, run.evaluation.head(1).inputs, quick)

    def export(trained, path: Path) -> Path:
        """Export a trained copy of the model like the baseline, checked against PyTorch."""
        model = replace(run.model, module=trained, predict=None)
        export_onnx(model, run.calibration.head(2).inputs, path)
        compact_names(path)
        sample = run.calibration.head(8)
        check_parity(
            model.run_torch(sample.inputs),
            run_session(make_session(path), sample.inputs, EVAL_BATCH),
            "ONNX export",
        )
        return path

    return StageContext(
        workdir=stage_dir,
        calibration=run.calibration,
        score=score,
        score_outputs=score_outputs,
        time_models=time_models,
        transformer=run.model.transformer,
        log=run.progress.log,
        task=run.task,
        seed=seed,
        module=None if module is None else copy.deepcopy(module).eval(),
        teacher=run.ref_cal,
        labels=run.y_cal,
        max_drop=run.max_drop,
        input_names=list(run.model.input_names),
        export=export if torch_stage else None,
        teacher_fn=run.model.run,
        evaluation_inputs=run.evaluation.inputs,
        progress=run.progress,
        read_data=lambda path: resolve_data(path, run.model, seq_len=run.seq_len),
    )


def _store_sparse(run: Run, path: Path) -> tuple[Path, dict | None]:
    """Store weights that are mostly zeros (pruned, also after quantization) as a bitmask
    plus the non-zero values, when that makes the file smaller. Lossless: ONNX Runtime
    rebuilds the same weights once at load, checked on calibration rows."""
    from presso.techniques.pruning.sparse_storage import write_sparse

    dst = path.with_name("sparse.onnx")
    rows = write_sparse(path, dst)
    sparse = [r for r in rows if r["storage"] == "bitmask"]
    before, after = file_size(path), file_size(dst)
    if not sparse or after >= before:
        dst.unlink(missing_ok=True)
        return path, None
    sample = run.calibration.head(32).inputs
    diff = check_parity(
        run_session(make_session(path), sample, EVAL_BATCH),
        run_session(make_session(dst), sample, EVAL_BATCH),
        "sparse storage",
    )
    note = (
        f"sparse storage: {len(sparse)} of {len(rows)} weight tensors stored as a bitmask + their non-zero "
        f"values ({before:,} -> {after:,} bytes); ONNX Runtime rebuilds them once at load "
        f"(outputs identical, max difference {diff:.2g})"
    )
    return dst, {
        "technique": "sparse-storage",
        "chosen": "bitmask",
        "variants": [],
        "notes": [note],
        "layers": rows,
    }


def _with_storage(layers: list[dict], path: Path) -> list[dict]:
    """Per-layer rows plus the bytes each layer's weights take in the stage's model."""
    sizes = layer_storage_bytes(path, [row["node"] for row in layers if "node" in row])
    return [
        {**row, "stored_bytes": sizes[row["node"]]} if row.get("node") in sizes else row for row in layers
    ]


def _verify(run: Run, ranked: Iterable[Candidate], tried: list[Candidate], technique: str):
    """First candidate (best first) that also meets the budget on the held-out rows."""
    baseline_value = run.metrics(run.baseline_eval, "evaluation")[run.primary]
    for cand in ranked:
        out = run_session(make_session(cand.path), run.evaluation.inputs, EVAL_BATCH)
        metrics = run.metrics(out, "evaluation")
        drop = baseline_value - metrics[run.primary]
        if drop <= run.max_drop + 1e-12:
            return cand, metrics
        cand.heldout_drop = drop
        cand.note += f"; failed on held-out rows ({run.primary} drop {drop:.4f})"
    lines = "; ".join(_refusal_line(c, run.primary) for c in tried)
    if run.unresolved:  # a budget finer than one row: the reason to name first, with its fix
        raise BudgetError(
            f"No {technique} variant keeps the {run.primary} drop within --max-drop {run.max_drop} on data "
            f"too small to resolve it: {'; '.join(run.unresolved)}. Variants tried: {lines}. Nothing was written."
        )
    raise BudgetError(
        f"No {technique} variant keeps the {run.primary} drop within --max-drop {run.max_drop} "
        f"({lines}). Nothing was written. Raise --max-drop or try another recipe."
    )


def _refusal_line(c: Candidate, primary: str) -> str:
    if c.score is None:
        return f"{c.name}: {c.note[:120]}"
    line = f"{c.name}: {primary} drop {c.score.drop:.4f} on calibration rows"
    if c.heldout_drop is not None:
        line += f"; failed on held-out rows ({primary} drop {c.heldout_drop:.4f})"
    return line


def resolved_recipe(
    recipe: Recipe, outcomes: list[StageOutcome], run: Run, seed: int, calibration_fraction: float
) -> Recipe:
    """The recipe as run: each stage pinned to the variant it chose (skipped stages left
    out, the packing stage kept as written), plus the settings."""
    pinned = [Stage(**o.pinned) for o in outcomes if o.pinned is not None]
    pinned += [s for s in recipe.stages if get_technique(s.technique).domain == "storage"]
    return Recipe(
        name=recipe.name,
        description=recipe.description,
        stages=pinned,
        settings=Settings(
            task=run.task, max_drop=run.max_drop, seed=seed, calibration_fraction=calibration_fraction
        ),
    )


def _measure(
    run: Run,
    baseline_path: Path | None,
    compressed_path: Path,
    compressed_metrics: dict,
    recipe: Recipe,
    stage_reports: list,
    notes: list[str],
    steps: list[tuple],
    pack: bool,
):
    progress = run.progress
    baseline_metrics = run.metrics(run.baseline_eval, "evaluation")
    batch1 = run.evaluation.head(1).inputs
    rows = run.bench.throughput_batch if run.model.batch_axis_is_free else 1
    reps = int(np.ceil(rows / len(run.evaluation)))
    batch_n = {k: np.concatenate([v] * reps)[:rows] for k, v in run.evaluation.inputs.items()}
    paths = {"baseline": baseline_path, "compressed": compressed_path}
    # The model after each stage joins the latency rounds, for the per-stage waterfall.
    between = {
        name: path
        for name, _, path, _, skipped in steps
        if not skipped and path not in (baseline_path, compressed_path)
    }
    with progress.task(
        "benchmarking baseline and compressed (interleaved rounds)",
        total=run.bench.rounds + max(3, run.bench.rounds // 2),
    ) as advance:
        if baseline_path is None:  # a callable teacher, timed calling its own predict
            timing = bench_with_callable(
                run.model, compressed_path, batch1, batch_n, run.bench, advance, latency_only=between
            )
        else:
            timing = bench_onnx(paths, batch1, batch_n, run.bench, on_round=advance, latency_only=between)
    step_latency = {**timing.pop("latency_only"), "baseline": timing["baseline"]["latency_ms"]["p50"]}
    torch_latency = None
    if run.model.module is not None:
        with progress.task("timing PyTorch eager fp32 (reference)"):
            torch_latency = bench_torch(run.model.module, run.model.input_names, batch1, run.bench)
    with progress.task("measuring peak memory (fresh processes)"):
        memory = {
            k: None if p is None else peak_memory_mb(p, batch_n, run.bench.thread_count)
            for k, p in paths.items()
        }
    figures = {}
    for key, path, metrics in (
        ("baseline", baseline_path, baseline_metrics),
        ("compressed", compressed_path, compressed_metrics),
    ):
        size, params = (
            (file_size(path), parameter_count(path))
            if path is not None
            else (callable_size(run.model.predict), None)
        )
        figures[key] = {
            "size_bytes": size,
            "parameters": params,
            **timing[key],
            "peak_memory_mb": memory[key],
            "metrics": metrics,
        }
    waterfall = _steps(run, figures, steps, step_latency, compressed_path)
    packed_path = stored = None
    if pack:
        packed_path, stored, pack_report = _pack(run, baseline_path, compressed_path, figures, waterfall)
        stage_reports.append(pack_report)
        notes += pack_report["notes"]
    sizes = {k: layer_sizes(p) for k, p in paths.items() if p is not None}
    report = build_report(
        run,
        recipe,
        figures,
        torch_latency,
        stage_reports,
        notes,
        steps=waterfall,
        layer_sizes=sizes,
        stored=stored,
    )
    return report, packed_path


def _steps(
    run: Run, figures: dict, steps: list[tuple], latency: dict[str, float], compressed_path: Path
) -> list[dict]:
    """The per-stage waterfall: the baseline and the model after each stage on the held-out
    rows, each timed in the same interleaved rounds as the headline figures."""
    base = figures["baseline"]
    out = [
        {
            "name": "baseline",
            "technique": None,
            "quality": base["metrics"][run.primary],
            "size_bytes": base["size_bytes"],
            "latency_ms": latency["baseline"],
        }
    ]
    for name, technique, path, metrics, skipped in steps:
        if skipped:
            out.append({**out[-1], "name": name, "technique": technique, "skipped": True})
            continue
        ms = figures["compressed"]["latency_ms"]["p50"] if path == compressed_path else latency.get(name)
        out.append(
            {
                "name": name,
                "technique": technique,
                "quality": metrics[run.primary],
                "size_bytes": file_size(path),
                "latency_ms": ms,
                "path": path,
            }
        )
    return out


# Models above this are packed once (the result), not at every step: LZMA takes about a
# second per few MB on these machines.
_PACK_EVERY_STEP_BYTES = 20_000_000


def _pack(run: Run, baseline_path: Path | None, compressed_path: Path, figures: dict, waterfall: list[dict]):
    """Write the packed storage file of the result, check that its loader gives back a
    model with the very same outputs, and size the baseline and each step the same way
    (where small enough).

    A model whose zeros were moved into bitmask storage is packed both ways and the
    smaller file kept: the packer's own sparse codec often beats the bitmask + values
    graph (whose bitmask is re-coded as opaque bytes)."""
    from presso.export.packed import pack, unpack

    names = [s["name"] for s in waterfall]
    sources = {"model.onnx": compressed_path}
    if "sparse storage" in names:
        sources["the model before its bitmask storage"] = waterfall[names.index("sparse storage") - 1]["path"]
    packed: dict[Path, tuple] = {}
    with run.progress.task("packing the weights (sparse + low-bit + entropy-coded)"):
        for i, path in enumerate(sources.values()):
            packed[path] = (pack(path, run.workdir / f"model{i}.packed"), run.workdir / f"model{i}.packed")
        source = min(sources, key=lambda k: packed[sources[k]][0].bytes)
        stats, dst = packed[sources[source]]
        sample = run.calibration.head(32).inputs
        diff = check_parity(
            run_session(make_session(compressed_path), sample, EVAL_BATCH),
            run_session(make_session(unpack(dst).SerializeToString()), sample, EVAL_BATCH),
            "packed storage",
        )
        for step in waterfall:
            path = baseline_path if step["name"] == "baseline" else step.get("path")
            if path is not None and path not in packed and file_size(path) <= _PACK_EVERY_STEP_BYTES:
                packed[path] = (pack(path, run.workdir / "step.packed"), None)
            if path in packed:
                step["stored_bytes"] = packed[path][0].bytes
    figures["compressed"]["stored_bytes"] = stats.bytes
    figures["baseline"]["stored_bytes"] = waterfall[0].get("stored_bytes")
    waterfall.append(
        {**waterfall[-1], "name": "pack", "technique": "pack", "stored_bytes": stats.bytes, "skipped": False}
    )
    params = figures["baseline"]["parameters"] or parameter_count(compressed_path)
    stored = {
        "file": "model.packed",
        "bytes": stats.bytes,
        "weights_bytes": stats.weights_bytes,
        "graph_bytes": stats.graph_bytes,
        "fp32_weights_bytes": 4 * params,
        "weights_ratio": round(4 * params / max(stats.weights_bytes, 1), 3),
        "codecs": stats.codecs,
    }
    note = (
        f"packed storage: model.packed is {stats.bytes:,} bytes ({stats.weights_bytes:,} of weights, "
        f"{stats.graph_bytes:,} of graph) against {figures['compressed']['size_bytes']:,} for the runnable "
        f"model.onnx; the weights are {stored['weights_ratio']:.1f}x smaller than {params:,} float32 values. "
        f"Lossless: presso.unpack gives back {source} (outputs identical to model.onnx, max difference "
        f"{diff:.2g})"
    )
    report = {"technique": "pack", "chosen": "lzma", "variants": [], "notes": [note], "layers": stats.tensors}
    return dst, stored, report
