"""The compression flow: load -> reference -> export -> transform -> verify -> measure.

Reading :func:`compress` top to bottom shows how a model moves through presso. The
baseline and the compressed model are measured by the same functions, in the same
process, on the same held-out rows. The parts live beside this module: :mod:`.run`
(prepare a run), :mod:`.stage` (one stage, verified), :mod:`.measure` (the evidence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from typing_extensions import Unpack

from presso.errors import BudgetError, PressoError
from presso.export.compact import compact_names
from presso.progress import SILENT, Progress
from presso.recipe.checkpoint import RunCheckpoint, StageOutcome, run_fingerprint
from presso.recipe.measure import measure
from presso.recipe.result import CompressionResult
from presso.recipe.run import EVAL_BATCH, Prepared, Run, RunOptions, RunSettings, prepare
from presso.recipe.schema import Recipe, RecipeSpec, Settings, Stage, load_recipe
from presso.recipe.stage import StageInput, StagesRun, StepModel, run_stage
from presso.report.schema import StageReport
from presso.techniques.contract import Technique
from presso.techniques.registry import get_technique
from presso.techniques.storage import StorageContext, store_sparse
from presso.techniques.storage_config import PackConfig

__all__ = ["Prepared", "RunSettings", "compress", "prepare", "resolved_recipe", "run_recipe", "run_stages"]


def compress(
    model: Any,
    recipe: RecipeSpec = "int8",
    data: Any = None,
    *,
    settings: RunSettings | None = None,
    progress: Progress = SILENT,
    pack: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    **options: Unpack[RunOptions],
) -> CompressionResult:
    """Compress ``model`` with ``recipe`` and measure it against the original.

    Parameters
    ----------
    model : nn.Module, str or Path
        A PyTorch module, an ``.onnx`` file, a Hugging Face model folder, or a factory
        ``"file.py:fn"`` / ``"package.module:fn"`` (with ``weights=`` a state dict).
    recipe : str, Path, Recipe or list of technique configs
        A built-in recipe name (``presso recipes`` lists them), a recipe YAML file, or the
        stages themselves: ``[presso.Slim(ratio=0.65), presso.Int8()]``.
    data : path, arrays, (X, y), list of texts or Dataset
        Rows the model was not trained on. They are split (seeded) into calibration
        rows and held-out evaluation rows; every reported metric uses the latter.
    settings : RunSettings, optional
        How the run reads the data and judges and times the result; any of its fields may
        also be given as a keyword (``task=``, ``max_drop=``, ``metric=``, ``target=``,
        ``group=``, ``weights=``, ``seed=``, ``calibration_fraction=``, ``seq_len=``,
        ``bench=``): see :class:`presso.RunSettings`. ``max_drop`` is the largest allowed
        drop of the budget's metric on held-out rows (default 0.01): absolute for scores,
        relative for errors (:func:`presso.tasks.drop`).
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
    >>> ex = presso.load_example("tabular")  # doctest: +SKIP
    >>> result = presso.compress(ex.model, "int8", data=ex.data, task=ex.task)  # doctest: +SKIP
    >>> result.save("tabular-int8")  # doctest: +SKIP
    """
    recipe = load_recipe(recipe)
    run = RunSettings.of(settings, options, "compress")
    prepared = prepare(model, data, settings=run, recipe=recipe, progress=progress)
    try:
        with prepared.temporary_files():  # ORT's temporary files die with the run's folder
            return run_recipe(prepared, recipe, pack=pack, checkpoint=checkpoint, resume=resume)
    except BaseException:
        prepared.close()
        raise


def run_stages(
    run: Run, recipe: Recipe, baseline_path: Path | None, seed: int, saved: RunCheckpoint | None = None
) -> StagesRun:
    """Run the recipe's model-changing stages in order (budget checked after each), then
    store mostly-zero weights sparsely. Storage stages (pack) are left to the caller."""
    stages = recipe.configs()
    outcomes: list[StageOutcome] = []
    # The PyTorch model torch stages train, and the transformer shape the stages see.
    start = StageInput(baseline_path, run.model.module, run.model.transformer)
    for index, ((technique, config), spec) in enumerate(zip(stages, recipe.stages, strict=True), 1):
        if technique.domain == "storage":
            continue  # packing works on the final model, after every other stage
        if saved is not None and index <= saved.finished:
            outcome = saved.restore(index, run.workdir)
            run.progress.log(f"stage {index}/{len(stages)}: {technique.name} restored from the checkpoint")
        else:
            outcome = run_stage(run, index, len(stages), technique, config, spec, start, seed)
            if saved is not None:
                saved.save(index, outcome)
        outcomes.append(outcome)
        if not outcome.skipped:
            module = outcome.module if technique.domain == "torch" else None
            start = StageInput(outcome.path, module, outcome.transformer)
    if all(o.skipped for o in outcomes):
        raise BudgetError(
            f"Every stage of recipe '{recipe.name}' was skipped, so there is no compressed "
            "model. Raise --max-drop or try another recipe."
        )
    current = start.model
    assert current is not None  # a stage ran, so there is a model
    compact_names(current)
    eval_metrics = next(o.metrics for o in reversed(outcomes) if o.metrics is not None)
    stage_reports = [o.report for o in outcomes]
    notes = list(run.model.notes) + [n for o in outcomes for n in o.notes]
    steps = [
        StepModel(f"{i} {o.technique}", o.technique, o.path, o.metrics) for i, o in enumerate(outcomes, 1)
    ]
    if any(o.sparse for o in outcomes if not o.skipped):  # a scan of every weight: only where zeros were made
        stored = store_sparse(
            current, StorageContext(run.workdir, run.calibration.head(32).inputs, batch=EVAL_BATCH)
        )
        if stored is not None:
            current = stored.model
            stage_reports.append(StageReport(**stored.report))
            notes += stored.notes
            steps.append(StepModel("sparse storage", "sparse-storage", current, eval_metrics))
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
        resolved = resolved_recipe(recipe, done.outcomes, run, seed, calibration_fraction)
        report, packed_path = measure(run, prepared.baseline, done, resolved, _storage_stages(recipe, pack))
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


def _fingerprint(run: Run, recipe: Recipe, seed: int, calibration_fraction: float) -> str:
    settings = {
        "task": run.task,
        "max_drop": run.max_drop,
        "metric": run.primary,
        "seed": seed,
        "seq_len": run.seq_len,
        "calibration_fraction": calibration_fraction,
    }
    arrays = [*run.data.inputs.values(), run.ref_cal, run.ref_eval]
    if run.data.target is not None:
        arrays.append(np.asarray(run.data.target))
    return run_fingerprint(recipe.model_dump_json(), settings, arrays)


def _storage_stages(recipe: Recipe, pack: bool) -> list[tuple[Technique, BaseModel]]:
    """The recipe's storage stage (at most one, last), or pack when asked for (--packed)."""
    stages = [(t, c) for t, c in recipe.configs() if t.domain == "storage"]
    if pack and not stages:
        stages.append((get_technique("pack"), PackConfig()))
    return stages


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
            task=run.task,
            max_drop=run.max_drop,
            metric=run.primary,
            seed=seed,
            calibration_fraction=calibration_fraction,
        ),
    )
