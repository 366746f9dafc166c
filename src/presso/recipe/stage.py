"""One stage of a recipe: run the technique on the current model, verify its best variant
on the held-out rows, and keep it, or skip the stage where the recipe allows."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from presso.data.resolve import resolve_data
from presso.errors import BudgetError, NothingToDo
from presso.export.compact import compact_names
from presso.export.onnx_export import check_parity, export_onnx
from presso.measure.bench import BenchSettings, Timing, time_latency
from presso.measure.size import file_size, layer_family_bytes
from presso.recipe.checkpoint import StageOutcome
from presso.recipe.run import EVAL_BATCH, Run
from presso.recipe.schema import Stage
from presso.report.schema import StageReport
from presso.runtime.session import make_session, run_session
from presso.tasks import budget_words
from presso.techniques.base import Candidate, Score, StageContext
from presso.techniques.contract import Technique


@dataclass(frozen=True)
class StageInput:
    """What a stage starts from: the current model, the PyTorch module torch stages train
    (None after an ONNX stage) and the transformer's shape (None: not a transformer)."""

    model: Path | None
    module: Any
    transformer: dict | None


def run_stage(
    run: Run,
    index: int,
    count: int,
    technique: Technique,
    config: BaseModel,
    spec: Stage,
    start: StageInput,
    seed: int,
) -> StageOutcome:
    """Run one stage on ``start`` and verify its best variant on the held-out rows.

    An ``optional`` stage with no variant within budget, or a stage whose result does not
    pay off (``keep_if``), is skipped: the run goes on with the model it had."""
    stage_dir = run.workdir / f"stage{index}-{technique.name}"
    stage_dir.mkdir()
    torch_stage = technique.domain == "torch"
    ctx = _stage_context(run, stage_dir, start, seed, torch_stage)
    tried: list[Candidate] = []
    try:
        with run.progress.task(f"stage {index}/{count}: {technique.name}"):
            result = technique.run(start.model, config, ctx)
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
        return _skipped(run, technique.name, index, reason, tried, start.transformer)
    not_paying = _not_paying(run, spec.keep_if, start.model, chosen.path)
    if not_paying:
        return _skipped(run, technique.name, index, not_paying, result.tried, start.transformer)
    layers = chosen.layers if chosen.layers is not None else result.layers
    notes = result.notes + chosen.notes
    report = StageReport(
        technique=technique.name,
        chosen=chosen.name,
        variants=[c.describe() for c in result.tried],
        notes=notes,
        layers=_with_storage(layers, chosen.path),
    )
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
        notes,
        chosen.transformer if chosen.transformer is not None else start.transformer,
        sparse=technique.sparse,
    )


def _skipped(
    run: Run, technique: str, index: int, reason: str, tried: list[Candidate], transformer: dict | None
) -> StageOutcome:
    note = f"stage {index} '{technique}' skipped: {reason}; the run goes on with the model before it"
    run.progress.log(note)
    report = StageReport(
        technique=technique, chosen=None, skipped=True, variants=[c.describe() for c in tried], notes=[note]
    )
    return StageOutcome(technique, report, None, notes=[note], transformer=transformer)


def _not_paying(run: Run, keep_if: str, before: Path | None, after: Path) -> str | None:
    """Why a stage's result is not kept under ``keep_if`` (None: keep it)."""
    if keep_if == "always" or before is None:
        return None
    if keep_if == "smaller":
        b, a = file_size(before), file_size(after)
        return None if a < b else f"its file is not smaller ({a:,} vs {b:,} bytes; keep_if: smaller)"
    with run.progress.task("timing the stage's result against its input (interleaved rounds)"):
        t = time_latency({"before": before, "after": after}, run.evaluation.timing_row(), run.bench)
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


def _stage_context(
    run: Run, stage_dir: Path, start: StageInput, seed: int, torch_stage: bool
) -> StageContext:
    module = start.module if torch_stage else None
    baseline_cal = run.metrics(run.ref_cal, "calibration")[run.primary]

    def score_outputs(out: np.ndarray) -> Score:
        metrics = run.metrics(np.asarray(out), "calibration")
        value = metrics[run.primary]
        drop = run.drop(baseline_cal, value)
        return Score(run.primary, value, drop, drop <= run.max_drop + 1e-12, metrics)

    def score(path: Path) -> Score:
        return score_outputs(run_session(make_session(path), run.calibration.inputs, EVAL_BATCH))

    def time_models(paths: dict[str, Path]) -> dict[str, Timing]:
        quick = BenchSettings(rounds=6, round_seconds=0.1, threads=run.bench.threads)
        with run.progress.task("timing variants"):
            return time_latency(paths, run.evaluation.timing_row(), quick)

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
        transformer=copy.deepcopy(start.transformer),
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
        tokenizer=run.model.tokenizer,
        seq_len=run.seq_len,
        train_texts=run.data.train_texts,
    )


def _with_storage(layers: list[dict], path: Path) -> list[dict]:
    """Per-layer rows plus the bytes each layer's weights take in the stage's model."""
    sizes = layer_family_bytes(path, [row["node"] for row in layers if "node" in row])
    return [
        {**row, "stored_bytes": sizes[row["node"]]} if row.get("node") in sizes else row for row in layers
    ]


def _verify(run: Run, ranked: Iterable[Candidate], tried: list[Candidate], technique: str):
    """First candidate (best first) that also meets the budget on the held-out rows."""
    baseline_value = run.baseline_metrics()[run.primary]
    for cand in ranked:
        assert cand.path is not None  # a ranked candidate passed on calibration: its model was written
        out = run_session(make_session(cand.path), run.evaluation.inputs, EVAL_BATCH)
        metrics = run.metrics(out, "evaluation")
        drop = run.drop(baseline_value, metrics[run.primary])
        if drop <= run.max_drop + 1e-12:
            return cand, metrics
        cand.heldout_drop = drop
        cand.note += f"; failed on held-out rows ({budget_words(run.primary)} {drop:.4f})"
    lines = "; ".join(_refusal_line(c, run.primary) for c in tried)
    what = budget_words(run.primary)
    if run.unresolved:  # a budget finer than one row: the reason to name first, with its fix
        raise BudgetError(
            f"No {technique} variant keeps the {what} within --max-drop {run.max_drop} on data "
            f"too small to resolve it: {'; '.join(run.unresolved)}. Variants tried: {lines}. Nothing was written."
        )
    raise BudgetError(
        f"No {technique} variant keeps the {what} within --max-drop {run.max_drop} "
        f"({lines}). Nothing was written. Raise --max-drop or try another recipe."
    )


def _refusal_line(c: Candidate, primary: str) -> str:
    if c.score is None:
        return f"{c.name}: {c.note[:120]}"
    what = budget_words(primary)
    line = f"{c.name}: {what} {c.score.drop:.4f} on calibration rows"
    if c.heldout_drop is not None:
        line += f"; failed on held-out rows ({what} {c.heldout_drop:.4f})"
    return line


@dataclass(frozen=True)
class StepModel:
    """The model after one step of the run, before the waterfall measures it."""

    name: str  # "1 prune", "2 int8", "sparse storage"
    technique: str
    path: Path | None  # None: the stage was skipped
    metrics: dict[str, float] | None  # held-out metrics


@dataclass
class StagesRun:
    """What running a recipe's stages left: the final model and what each stage did."""

    path: Path
    outcomes: list[StageOutcome]
    metrics: dict[str, float]  # the final model's metrics on the held-out rows
    stage_reports: list[StageReport]
    notes: list[str]
    steps: list[StepModel]  # per step, for the waterfall
