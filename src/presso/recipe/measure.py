"""Measure the result against the baseline: interleaved latency and throughput rounds,
peak memory in fresh processes, sizes, the per-stage waterfall, and the storage figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from presso.measure.bench import bench_onnx, bench_torch, bench_with_callable
from presso.measure.memory import peak_memory_mb
from presso.measure.size import callable_size, file_size, layer_sizes, parameter_count
from presso.measure.text_bench import (
    HeldOutTexts,
    bench_callable_texts,
    bench_onnx_texts,
    bench_torch_texts,
)
from presso.recipe.run import EVAL_BATCH, Run
from presso.recipe.schema import Recipe
from presso.recipe.stage import StagesRun, StepModel
from presso.report.build import Measured, build_report
from presso.report.schema import Report, StageReport, Step
from presso.techniques.contract import Technique
from presso.techniques.storage import StorageContext


def measure(
    run: Run,
    baseline_path: Path | None,
    done: StagesRun,
    recipe: Recipe,
    storage: Sequence[tuple[Technique, BaseModel]] = (),
) -> tuple[Report, Path | None]:
    """The report of ``done``, after its ``storage`` stages (pack) wrote the stored file
    (returned with the report; None without one)."""
    progress = run.progress
    batch1 = run.evaluation.head(1).inputs
    rows = run.bench.throughput_batch if run.model.batch_axis_is_free else 1
    reps = int(np.ceil(rows / len(run.evaluation)))
    batch_n = {k: np.concatenate([v] * reps)[:rows] for k, v in run.evaluation.inputs.items()}
    paths = {"baseline": baseline_path, "compressed": done.path}
    # The model after each stage joins the latency rounds, for the per-stage waterfall.
    between = {
        s.name: s.path for s in done.steps if s.path is not None and s.path not in (baseline_path, done.path)
    }
    with progress.task(
        "benchmarking baseline and compressed (interleaved rounds)",
        total=run.bench.rounds + max(3, run.bench.rounds // 2),
    ) as advance:
        timing = _bench(run, baseline_path, done.path, batch1, batch_n, advance, between)
    step_latency = {**timing.pop("latency_only"), "baseline": timing["baseline"]["latency_ms"]["p50"]}
    torch_latency = None
    if run.model.module is not None:
        with progress.task("timing PyTorch eager fp32 (reference)"):
            texts = _texts(run, timing)
            torch_latency = (
                bench_torch(run.model.module, run.model.input_names, batch1, run.bench)
                if texts is None
                else bench_torch_texts(run.model.module, run.model.input_names, texts, batch_n, run.bench)
            )
    with progress.task("measuring peak memory (fresh processes)"):
        memory = {
            k: None if p is None else peak_memory_mb(p, batch_n, run.bench.thread_count)
            for k, p in paths.items()
        }
    metrics = {"baseline": run.baseline_metrics(), "compressed": done.metrics}
    figures = {k: _figures(run, p, timing[k], memory[k], metrics[k]) for k, p in paths.items()}
    waterfall = _waterfall(run, figures, done.steps, step_latency, done.path)
    stage_reports, notes, packed_path, stored = list(done.stage_reports), list(done.notes), None, None
    for technique, config in storage:  # how the weights are stored: after everything else
        stored_by = technique.run(done.path, config, _storage_context(run, baseline_path, done.steps))
        packed_path, stored = stored_by.packed, stored_by.stored
        if stored is not None:
            figures["compressed"]["stored_bytes"] = stored["bytes"]
            figures["baseline"]["stored_bytes"] = stored_by.stored_bytes.get("baseline")
        waterfall = _with_stored_bytes(waterfall, stored_by.stored_bytes)
        update = {"name": technique.name, "technique": technique.name, "skipped": False}
        waterfall.append(
            waterfall[-1].model_copy(update={**update, "stored_bytes": stored and stored["bytes"]})
        )
        stage_reports.append(StageReport(**stored_by.report))
        notes += stored_by.notes
    measured = Measured(
        figures=figures,
        torch_latency=torch_latency,
        stages=stage_reports,
        notes=notes,
        steps=waterfall,
        layer_sizes={k: layer_sizes(p) for k, p in paths.items() if p is not None},
        stored=stored,
    )
    return build_report(run, recipe, measured), packed_path


def _bench(
    run: Run,
    baseline_path: Path | None,
    path: Path,
    batch1: dict[str, np.ndarray],
    batch_n: dict[str, np.ndarray],
    advance: Callable[[], None],
    between: dict[str, Path],
) -> dict[str, Any]:
    """Latency and throughput of the baseline and ``path`` (and batch-1 latency of the models
    ``between``), interleaved: text at its real length with the padded figure beside it when
    every model allows it, else on the stored rows (``batch1``, ``batch_n``)."""
    texts = HeldOutTexts.of(run.evaluation.inputs)
    if baseline_path is None:  # a callable teacher, timed calling its own predict
        if texts is not None:
            timing = bench_callable_texts(run.model, path, texts, batch_n, run.bench, advance, between)
            if timing is not None:
                return timing
        timing = bench_with_callable(
            run.model, path, batch1, batch_n, run.bench, advance, latency_only=between
        )
        return _padded(timing, texts)
    paths = {"baseline": baseline_path, "compressed": path}
    if texts is not None:
        timing = bench_onnx_texts(paths, texts, batch_n, run.bench, advance, between)
        if timing is not None:
            return timing
    return _padded(
        bench_onnx(paths, batch1, batch_n, run.bench, on_round=advance, latency_only=between), texts
    )


def _padded(timing: dict[str, Any], texts: HeldOutTexts | None) -> dict[str, Any]:
    """``timing`` of text rows as stored says so: every call ran a row padded to the limit."""
    if texts is not None:
        for k in ("baseline", "compressed"):
            timing[k]["latency_ms"].update(basis="fixed length", tokens=texts.max_tokens)
    return timing


def _texts(run: Run, timing: dict[str, Any]) -> HeldOutTexts | None:
    """The held-out texts when the models were timed at their real length (PyTorch then is too)."""
    real = timing["baseline"]["latency_ms"].get("basis") == "real length"
    return HeldOutTexts.of(run.evaluation.inputs) if real else None


def _figures(
    run: Run, path: Path | None, timing: dict[str, Any], memory: float | None, metrics: dict[str, float]
) -> dict[str, Any]:
    size, params = (
        (file_size(path), parameter_count(path))
        if path is not None
        else (callable_size(run.model.predict), None)
    )
    return {"size_bytes": size, "parameters": params, **timing, "peak_memory_mb": memory, "metrics": metrics}


def _waterfall(
    run: Run, figures: dict, steps: list[StepModel], latency: dict[str, float], compressed_path: Path
) -> list[Step]:
    """The per-stage waterfall: the baseline and the model after each stage on the held-out
    rows, each timed in the same interleaved rounds as the headline figures."""
    base = figures["baseline"]
    out = [
        Step(
            name="baseline",
            technique=None,
            quality=base["metrics"][run.primary],
            size_bytes=base["size_bytes"],
            latency_ms=latency["baseline"],
        )
    ]
    for step in steps:
        if step.path is None or step.metrics is None:
            out.append(
                out[-1].model_copy(update={"name": step.name, "technique": step.technique, "skipped": True})
            )
            continue
        ms = (
            figures["compressed"]["latency_ms"]["p50"]
            if step.path == compressed_path
            else latency.get(step.name)
        )
        out.append(
            Step(
                name=step.name,
                technique=step.technique,
                quality=step.metrics[run.primary],
                size_bytes=file_size(step.path),
                latency_ms=ms,
            )
        )
    return out


def _storage_context(run: Run, baseline_path: Path | None, steps: list[StepModel]) -> StorageContext:
    models = {} if baseline_path is None else {"baseline": baseline_path}
    models.update({s.name: s.path for s in steps if s.path is not None})
    ran = [s for s in steps if s.path is not None]
    if len(ran) > 1 and ran[-1].name == "sparse storage" and ran[-2].path is not None:
        models["before sparse storage"] = ran[-2].path
    return StorageContext(run.workdir, run.calibration.head(32).inputs, run.progress, models, EVAL_BATCH)


def _with_stored_bytes(waterfall: list[Step], stored: dict[str, int]) -> list[Step]:
    """The waterfall with each step's packed size (a skipped step keeps the one before it)."""
    out: list[Step] = []
    for step in waterfall:
        size = out[-1].stored_bytes if step.skipped and out else stored.get(step.name)
        out.append(step.model_copy(update={"stored_bytes": size}))
    return out
