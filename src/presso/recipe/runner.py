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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from presso.data.dataset import Dataset, split
from presso.data.resolve import resolve_data
from presso.errors import BudgetError, PressoError
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
from presso.measure.metrics import check_target, evaluate
from presso.measure.size import callable_size, file_size, layer_storage_bytes, parameter_count
from presso.model.loaded import LoadedModel
from presso.model.sources import load_model
from presso.progress import SILENT, Progress
from presso.recipe.result import CompressionResult
from presso.recipe.schema import Recipe, Settings, Stage, load_recipe
from presso.report.build import build_report
from presso.runtime.session import make_session, run_session
from presso.tasks import get_task, primary_metric
from presso.techniques.base import Candidate, Score, StageContext

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

    @property
    def primary(self) -> str:
        return primary_metric(self.task, self.evaluation.has_labels)

    def metrics(self, outputs: np.ndarray, on: str) -> dict[str, float]:
        if on == "calibration":
            return evaluate(self.task, outputs, self.ref_cal, self.y_cal, self.calibration.inputs)
        return evaluate(self.task, outputs, self.ref_eval, self.y_eval, self.evaluation.inputs)


def compress(model: Any, recipe: str | Path | Recipe = "int8", data: Any = None, *,
             task: str | None = None, max_drop: float | None = None, target: str | None = None,
             weights: str | Path | None = None, seed: int | None = None,
             calibration_fraction: float | None = None, seq_len: int = 128,
             bench: BenchSettings | None = None, progress: Progress = SILENT) -> CompressionResult:
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
    stages = recipe.configs()
    settings = recipe.settings
    seed = _first(seed, settings.seed, 0)
    calibration_fraction = _first(calibration_fraction, settings.calibration_fraction, 0.3)
    bench = bench or BenchSettings()

    progress.log("loading the model")
    loaded = load_model(model, weights=weights)
    data = resolve_data(data, loaded, target=target, seq_len=seq_len)
    _check_stage_order(recipe, stages, loaded)

    workdir = Path(tempfile.mkdtemp(prefix="presso-work-"))
    try:
        run = _prepare(loaded, data, task or settings.task, max_drop, settings, seed,
                       calibration_fraction, workdir, bench, progress, seq_len)
        baseline_path = _baseline(run)
        current = baseline_path
        stage_reports, notes = [], list(loaded.notes)
        chosen_per_stage: list[Candidate] = []
        module = loaded.module  # the PyTorch model torch stages train, until an ONNX stage runs
        for index, (technique, config) in enumerate(stages, 1):
            stage_dir = workdir / f"stage{index}-{technique.name}"
            stage_dir.mkdir()
            torch_stage = technique.domain == "torch"
            ctx = _stage_context(run, stage_dir, module if torch_stage else None, seed, torch_stage)
            with progress.task(f"stage {index}/{len(stages)}: {technique.name}"):
                result = technique.apply(current, config, ctx)
            chosen, eval_metrics = _verify(run, result.ranked, result.tried, technique.name)
            chosen_per_stage.append(chosen)
            module = chosen.module if technique.domain == "torch" else None
            layers = chosen.layers if chosen.layers is not None else result.layers
            stage_reports.append({
                "technique": technique.name, "chosen": chosen.name,
                "variants": [c.describe() for c in result.tried],
                "notes": result.notes + chosen.notes, "layers": _with_storage(layers, chosen.path),
            })
            notes += result.notes + chosen.notes
            current = chosen.path
        compact_names(current)
        storage = None
        if any(t.sparse for t, _ in stages):  # a scan of every weight: only where zeros were made
            current, storage = _store_sparse(run, current)
        if storage is not None:
            stage_reports.append(storage)
            notes += storage["notes"]
        resolved = _resolved_recipe(recipe, stages, chosen_per_stage, run, seed, calibration_fraction)
        report = _measure(run, baseline_path, current, eval_metrics, resolved, stage_reports, notes)
        return CompressionResult(report=report, model_path=current, workdir=workdir,
                                 tokenizer=loaded.tokenizer, recipe=resolved)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _check_stage_order(recipe: Recipe, stages, loaded: LoadedModel) -> None:
    """Stages that train the PyTorch model need one, and must run before ONNX stages."""
    torch_stages = [(i, t.name) for i, (t, _) in enumerate(stages, 1) if t.domain == "torch"]
    if loaded.kind != "torch":
        # A student with its own architecture (distill: student mlp / a factory) can learn from
        # an ONNX file or a callable; every stage after it works on that student.
        first, config = stages[0] if stages else (None, None)
        needs_module = getattr(config, "needs_teacher_module", None)  # None: not a distill stage
        what = "an ONNX file" if loaded.kind == "onnx" else "a Python callable"
        if needs_module:
            raise PressoError(f"Recipe '{recipe.name}' stage 1 '{first.name}': student: auto derives the student "
                              f"from the teacher's PyTorch architecture, and this teacher is {what}. Use "
                              "student: mlp (flat rows) or your own student factory file.py:fn.")
        if needs_module is None and loaded.kind == "callable":
            raise PressoError(f"Recipe '{recipe.name}' cannot start from {what}: presso can only distil a "
                              "student from it. Use a recipe whose first stage is distill with student: mlp "
                              "or a factory (e.g. presso distill MODEL --student mlp).")
        if needs_module is None and torch_stages:
            i, name = torch_stages[0]
            raise PressoError(f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model; it needs "
                              "a PyTorch model or Hugging Face folder, not an ONNX file (or a distill stage "
                              "first with student: mlp or a factory).")
    first_onnx = next((i for i, (t, _) in enumerate(stages, 1) if t.domain == "onnx"), None)
    late = [(i, n) for i, n in torch_stages if first_onnx is not None and i > first_onnx]
    if late:
        i, name = late[0]
        raise PressoError(f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model, so it must "
                          f"come before stage {first_onnx} '{stages[first_onnx - 1][0].name}', which works "
                          "on the exported ONNX graph. Reorder the stages.")


def _first(*values):
    return next(v for v in values if v is not None)


def _prepare(loaded: LoadedModel, data: Dataset, task: str | None, max_drop: float | None,
             settings: Settings, seed: int, calibration_fraction: float, workdir: Path,
             bench: BenchSettings, progress: Progress, seq_len: int = 128) -> Run:
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
    # can alter a live model, DESIGN.md).
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
    return Run(
        model=loaded, task=task, max_drop=float(max_drop), data=data,
        calibration=parts.calibration, evaluation=parts.evaluation, split_info=split_info,
        ref_cal=reference[parts.calibration_index], ref_eval=reference[parts.evaluation_index],
        y_cal=parts.calibration.target, y_eval=parts.evaluation.target,
        workdir=workdir, bench=bench, progress=progress, seq_len=seq_len,
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
        check_parity(model.run_torch(sample.inputs),
                     run_session(make_session(path), sample.inputs, EVAL_BATCH), "ONNX export")
        return path

    return StageContext(workdir=stage_dir, calibration=run.calibration, score=score,
                        score_outputs=score_outputs,
                        time_models=time_models, transformer=run.model.transformer,
                        log=run.progress.log, task=run.task, seed=seed,
                        module=None if module is None else copy.deepcopy(module).eval(),
                        teacher=run.ref_cal, labels=run.y_cal, max_drop=run.max_drop,
                        input_names=list(run.model.input_names),
                        export=export if torch_stage else None, teacher_fn=run.model.run,
                        evaluation_inputs=run.evaluation.inputs, progress=run.progress,
                        read_data=lambda path: resolve_data(path, run.model, seq_len=run.seq_len))


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
    diff = check_parity(run_session(make_session(path), sample, EVAL_BATCH),
                        run_session(make_session(dst), sample, EVAL_BATCH), "sparse storage")
    note = (f"sparse storage: {len(sparse)} of {len(rows)} weight tensors stored as a bitmask + their non-zero "
            f"values ({before:,} -> {after:,} bytes); ONNX Runtime rebuilds them once at load "
            f"(outputs identical, max difference {diff:.2g})")
    return dst, {"technique": "sparse-storage", "chosen": "bitmask", "variants": [], "notes": [note],
                 "layers": rows}


def _with_storage(layers: list[dict], path: Path) -> list[dict]:
    """Per-layer rows plus the bytes each layer's weights take in the stage's model."""
    sizes = layer_storage_bytes(path, [row["node"] for row in layers if "node" in row])
    return [{**row, "stored_bytes": sizes[row["node"]]} if row.get("node") in sizes else row
            for row in layers]


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


def _resolved_recipe(recipe: Recipe, stages, chosen: list[Candidate], run: Run,
                     seed: int, calibration_fraction: float) -> Recipe:
    """The recipe as run: each stage pinned to the variant it chose, plus the settings."""
    pinned = []
    for (technique, config), picked in zip(stages, chosen, strict=True):
        options = config.model_dump(mode="json")
        options.update(picked.options)
        pinned.append(Stage(technique=technique.name, options=options))
    return Recipe(
        name=recipe.name, description=recipe.description, stages=pinned,
        settings=Settings(task=run.task, max_drop=run.max_drop, seed=seed,
                          calibration_fraction=calibration_fraction),
    )


def _measure(run: Run, baseline_path: Path, compressed_path: Path, compressed_metrics: dict,
             recipe: Recipe, stage_reports: list, notes: list[str]):
    progress = run.progress
    baseline_metrics = run.metrics(run.baseline_eval, "evaluation")
    batch1 = run.evaluation.head(1).inputs
    rows = run.bench.throughput_batch if run.model.batch_axis_is_free else 1
    reps = int(np.ceil(rows / len(run.evaluation)))
    batch_n = {k: np.concatenate([v] * reps)[:rows] for k, v in run.evaluation.inputs.items()}
    paths = {"baseline": baseline_path, "compressed": compressed_path}
    with progress.task("benchmarking baseline and compressed (interleaved rounds)",
                       total=run.bench.rounds + max(3, run.bench.rounds // 2)) as advance:
        if baseline_path is None:  # a callable teacher, timed calling its own predict
            timing = bench_with_callable(run.model, compressed_path, batch1, batch_n, run.bench, advance)
        else:
            timing = bench_onnx(paths, batch1, batch_n, run.bench, on_round=advance)
    torch_latency = None
    if run.model.module is not None:
        with progress.task("timing PyTorch eager fp32 (reference)"):
            torch_latency = bench_torch(run.model.module, run.model.input_names, batch1, run.bench)
    with progress.task("measuring peak memory (fresh processes)"):
        memory = {k: None if p is None else peak_memory_mb(p, batch_n, run.bench.thread_count)
                  for k, p in paths.items()}
    figures = {}
    for key, path, metrics in (("baseline", baseline_path, baseline_metrics),
                               ("compressed", compressed_path, compressed_metrics)):
        size, params = (file_size(path), parameter_count(path)) if path is not None else (
            callable_size(run.model.predict), None)
        figures[key] = {"size_bytes": size, "parameters": params, **timing[key],
                        "peak_memory_mb": memory[key], "metrics": metrics}
    return build_report(run, recipe, figures, torch_latency, stage_reports, notes)
