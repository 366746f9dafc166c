"""Automatic compression search: a study of trials over the model's search space, the
Pareto front of quality drop, latency and size, and the chosen point written as an artifact.

The flow (:func:`search`):

1. prepare the model once (reference outputs, split, fp32 baseline), build its space;
2. open or join the study (Optuna storage: SQLite in the output folder by default, or a
   shared PostgreSQL server); a study remembers which model, data and space it is for;
3. run trials until the study holds ``trials`` finished ones (across all workers) or
   ``timeout`` seconds pass; a new study starts from the built-in recipes' points;
4. the feasible finished trials' front; this worker's front models re-timed together in one
   interleaved run (trials were timed at different moments), dropping any that now miss
   ``max_latency_ms``;
5. the front's best point for ``pick`` re-run as a full compress run, measured and reported
   like any recipe, with the search (trials, front, space) in its report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import Unpack

from presso.errors import BudgetError, PressoError
from presso.files import atomic_path, write_text_atomic
from presso.measure.bench import BenchSettings, time_latency
from presso.progress import SILENT, Progress
from presso.recipe.checkpoint import run_fingerprint
from presso.recipe.result import CompressionResult
from presso.recipe.run import RunOptions, RunSettings, new_workdir
from presso.recipe.runner import Prepared, prepare, run_recipe
from presso.recipe.schema import Recipe, Settings
from presso.search.front import LATENCY_NOISE, PICKS, near_front, ordered, pareto_front
from presso.search.samplers import FrontCrossover, make_sampler, warm_starts
from presso.search.space import SearchSpace
from presso.search.storage import check_url, default_url, open_storage, redact
from presso.search.trial import OBJECTIVES, Constraints, TrialRunner

if TYPE_CHECKING:
    from presso.report.schema import Search

SAMPLERS = ("tpe", "nsga2", "random", "grid", "rl")
SEARCH_FILES = ("study.db", "search.json", "trials")


@dataclass
class SearchResult:
    """The chosen model (``result``, written like any compress result) and the study."""

    result: CompressionResult
    study: str
    storage: str
    trials: list[dict]  # every trial: number, state, summary, objectives, feasible, on_front...
    front: list[dict]
    front_models: dict[int, Path] = field(default_factory=dict)  # trial -> its model (this worker's)

    def save(self, out: str | Path) -> Path:
        return save_search(self, out)


def search(
    model: Any,
    data: Any = None,
    *,
    out: str | Path,
    trials: int | None = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    sampler: str = "tpe",
    pick: str = "balanced",
    max_latency_ms: float | None = None,
    max_size_mb: float | None = None,
    techniques: list[str] | None = None,
    trial_rounds: int = 5,
    keep_front: bool = False,
    settings: RunSettings | None = None,
    progress: Progress = SILENT,
    **options: Unpack[RunOptions],
) -> SearchResult:
    """Search the model's compression space and return the front's best point for ``pick``.

    ``out`` is the search folder: the default SQLite study (``study.db``), each trial's
    recipe (``trials/NNNN.yaml``, re-runnable with ``presso compress --recipe``) and, once
    saved, the chosen artifact. ``storage`` (a database URL) and ``study`` (a name) let
    workers on many machines join one study; run the same call again to resume one.
    ``keep_front`` also keeps the model of every front point this worker ran (saved as
    ``front/NNNN.onnx``), to deploy another trade-off without re-running it. The run
    settings (task, max_drop, seed, ...) are those of :func:`presso.compress`:
    :class:`presso.RunSettings`, or its fields as keywords.
    """
    run_settings = RunSettings.of(settings, options, "search")
    out = Path(out)
    _check_options(trials, timeout, sampler, pick, max_latency_ms, max_size_mb, trial_rounds)
    _check_where(out, storage)
    url = storage or default_url(out)
    started = time.perf_counter()
    # A database server that cannot be reached fails now, not after minutes of preparing the
    # model; the default SQLite file is made once the options are known to be sound.
    db = open_storage(storage) if storage is not None else None
    prepared = prepare(model, data, settings=run_settings, progress=progress)
    scope = contextlib.ExitStack()
    scope.enter_context(prepared.temporary_files())  # ORT's temporary files die with the run's folder
    try:
        space = SearchSpace.for_model(prepared, techniques)
        constraints = _constraints(prepared, max_latency_ms, max_size_mb)
        db = _storage(db, out, url)
        name = study or f"presso-{prepared.run.model.name}"
        the_study = _open_study(
            db, url, name, space, prepared, sampler, trials, constraints, shared=storage is not None
        )
        models = prepared.run.workdir / "models"  # every trial's model: re-timed, and kept with keep_front
        reference = _run_trials(
            the_study, prepared, space, constraints, models, trial_rounds, trials, timeout, sampler, progress
        )
        rows, front, scale = _settle_front(the_study, out, prepared, constraints, models, reference, progress)
        result, picked = _final(prepared, front, pick, scale, progress)
        seconds = time.perf_counter() - started
        result.report.search = _report_section(
            the_study, url, sampler, pick, picked, constraints, space, rows, scale, seconds
        )
        kept = _keep_front(front, models, result._workdir) if keep_front else {}
        return SearchResult(result, name, redact(url), rows, front, kept)
    finally:
        scope.close()
        prepared.close()


def _constraints(prepared: Prepared, max_latency_ms: float | None, max_size_mb: float | None) -> Constraints:
    """The limits every trial is held to; an impossible latency limit fails here, before any trial."""
    constraints = Constraints(
        prepared.run.max_drop, max_latency_ms, None if max_size_mb is None else int(max_size_mb * 1e6)
    )
    if max_latency_ms is not None:
        _check_latency_floor(prepared, max_latency_ms)
    return constraints


def _storage(db, out: Path, url: str):
    """``db`` when a server was opened up front, else the default SQLite file in ``out``, made
    only now that the options and the model are known to be sound."""
    if db is not None:
        return db
    out.mkdir(parents=True, exist_ok=True)
    return open_storage(url)


def _run_trials(
    study,
    prepared: Prepared,
    space: SearchSpace,
    constraints: Constraints,
    models: Path,
    rounds: int,
    trials: int | None,
    timeout: float | None,
    sampler: str,
    progress: Progress,
) -> float | None:
    """Run trials until the study holds ``trials`` finished ones (every worker's) or ``timeout``
    passes. Returns the baseline's latency the trials were timed beside: their latencies' scale."""
    run = prepared.run
    reference = _baseline_ms(prepared, progress)
    # Each trial's recipe carries the prepared run's settings, so that it re-runs on the same split.
    settings = Settings(
        task=run.task,
        max_drop=run.max_drop,
        seed=prepared.seed,
        calibration_fraction=prepared.calibration_fraction,
    )
    runner = TrialRunner(
        prepared, space, settings, constraints, rounds=rounds, keep_models=models, reference_ms=reference
    )
    _optimize(study, runner, trials, timeout, progress, grid=sampler == "grid")
    return reference


def _baseline_ms(prepared: Prepared, progress: Progress) -> float | None:
    """The baseline's batch-1 p50 now: the scale every trial's latency is reported on (None
    without an ONNX baseline)."""
    if prepared.baseline is None:
        return None
    run = prepared.run
    with progress.task("timing the baseline (the scale of every trial's latency)"):
        timing = time_latency({"baseline": prepared.baseline}, run.evaluation.timing_row(), run.bench)
    return timing["baseline"].p50_ms


def _settle_front(
    study,
    out: Path,
    prepared: Prepared,
    constraints: Constraints,
    models: Path,
    reference: float | None,
    progress: Progress,
) -> tuple[list[dict], list[dict], float]:
    """(every trial's row, the front, the re-timing's scale), once the trials are done."""
    rows = _rows(study, constraints)
    if out.is_dir():
        _write_trials(out, rows)  # kept even when nothing below is feasible
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        raise BudgetError(_nothing_feasible(rows, constraints, prepared.run.primary))
    scale = _retime(prepared, feasible, models, constraints, reference, progress)
    feasible = [r for r in feasible if r["feasible"]]
    front = _front(feasible, scale)
    for r in rows:
        r["on_front"] = any(r is f for f in front)
    return rows, front, scale


def _keep_front(front: list[dict], models: Path, workdir: Path) -> dict[int, Path]:
    """Copies of the front models this worker ran, out of the preparation's folder (which is
    removed when the search returns) into the result's."""
    kept = {}
    for r in front:
        model = models / f"{r['number']}.onnx"
        if model.is_file():
            kept[r["number"]] = shutil.copyfile(model, workdir / f"front-{r['number']}.onnx")
    return kept


# ------------------------------------------------------------------ checks


def _check_where(out: Path, storage: str | None) -> None:
    """The default study.db goes in ``out``, which must be fit for it; a storage URL must be
    sound. Both fail before the model is loaded."""
    if storage is None:
        check_search_dir(out)
    else:
        check_url(storage)


def _check_options(trials, timeout, sampler, pick, max_latency_ms, max_size_mb, trial_rounds) -> None:
    if sampler not in SAMPLERS:
        raise PressoError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}.")
    if pick not in PICKS:
        raise PressoError(f"--pick '{pick}' is not one of {', '.join(PICKS)}.")
    if trials is not None and trials < 1:
        raise PressoError(f"--trials must be >= 1 (finished trials in the study). Got {trials}.")
    if timeout is not None and timeout <= 0:
        raise PressoError(f"--timeout must be a number of seconds > 0. Got {timeout}.")
    if trials is None and timeout is None:
        raise PressoError("Give --trials N or --timeout SECONDS (or both): a search needs a budget.")
    for flag, value in (("--max-latency-ms", max_latency_ms), ("--max-size-mb", max_size_mb)):
        if value is not None and not value > 0:
            raise PressoError(f"{flag} must be > 0 (no model has no latency or no size). Got {value}.")
    if trial_rounds < 1:
        raise PressoError(f"--trial-rounds must be >= 1. Got {trial_rounds}.")


def check_search_dir(out: Path) -> None:
    """A search folder may be new, empty, a search folder (resumed) or a compress artifact."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PressoError(f"--out '{out}' is a file, not a folder. Choose another --out.")
    names = {p.name for p in out.iterdir()}
    if names and not names & {*SEARCH_FILES, "report.json"}:
        raise PressoError(
            f"Output folder '{out}' exists and is neither a presso search folder nor an artifact. "
            "Choose another --out."
        )


def _check_latency_floor(prepared: Prepared, max_ms: float) -> None:
    """No model can answer faster than ONNX Runtime calls an empty graph on these inputs:
    a limit below that is impossible, said before any trial runs."""
    import onnx
    from onnx import TensorProto, helper

    run = prepared.run
    batch1 = run.evaluation.timing_row()
    first = run.model.input_names[0]
    dtype = {
        np.dtype("float32"): TensorProto.FLOAT,
        np.dtype("int64"): TensorProto.INT64,
        np.dtype("int32"): TensorProto.INT32,
    }.get(batch1[first].dtype, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node("Identity", [first], ["out"])],
        "floor",
        [helper.make_tensor_value_info(first, dtype, None)],
        [helper.make_tensor_value_info("out", dtype, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    path = run.workdir / "floor.onnx"
    onnx.save(model, str(path))
    floor = time_latency(
        {"floor": path},
        {first: batch1[first]},
        BenchSettings(rounds=3, round_seconds=0.05, threads=run.bench.threads),
    )
    floor_ms = floor["floor"].p50_ms
    if max_ms < floor_ms:
        raise PressoError(
            f"--max-latency-ms {max_ms:g} is impossible on this machine: ONNX Runtime takes "
            f"{floor_ms:.4f} ms to call an empty graph on one row here, before any layer runs. "
            "Give a larger limit."
        )


# ------------------------------------------------------------------ the study


def _open_study(
    storage,
    url: str,
    name: str,
    space: SearchSpace,
    prepared: Prepared,
    sampler_name: str,
    trials: int | None,
    constraints: Constraints,
    shared: bool,
):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_failed_trials()
    run = prepared.run
    fingerprint = run_fingerprint(
        space.digest(),
        {
            "task": run.task,
            "max_drop": run.max_drop,
            "metric": run.primary,  # a drop means something else under another metric
            "seed": prepared.seed,
            "seq_len": run.seq_len,
            "calibration_fraction": prepared.calibration_fraction,
        },
        [*run.data.inputs.values(), run.ref_cal, run.ref_eval],
    )
    existing = _existing_trials(storage, name)
    seed = prepared.seed + existing + (os.getpid() % 10_000 if shared else 0)
    sampler = make_sampler(sampler_name, seed, trials or 50, constraints)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            directions=["minimize"] * len(OBJECTIVES),
            load_if_exists=True,
        )
    except ValueError as exc:  # an existing study with other directions
        raise PressoError(
            f"Study '{name}' at {redact(url)} is not a presso search ({exc}). Use another --study name."
        ) from None
    owner = study.user_attrs.get("presso")
    if owner is None:
        study.set_user_attr(
            "presso", {"fingerprint": fingerprint, "model": run.model.name, "objectives": list(OBJECTIVES)}
        )
        study.set_metric_names(list(OBJECTIVES))
        if existing == 0:
            if sampler_name == "grid":
                # Enqueued, not drawn from Optuna's GridSampler: its grid is the product of every
                # choice, most of which do not matter for a given point; the queue is shared by
                # every worker, which takes the next point.
                points = space.grid_points()
                np.random.default_rng(prepared.seed).shuffle(points)
            else:
                points = warm_starts(space)
            for params in points:
                study.enqueue_trial(params, skip_if_exists=sampler_name != "grid")
    elif owner.get("fingerprint") != fingerprint:
        raise PressoError(
            f"Study '{name}' at {redact(url)} belongs to another search (model "
            f"'{owner.get('model')}', or other data, settings or search space). Use another "
            "--study name, or the same model, data and options as its other workers."
        )
    return study


def _existing_trials(storage, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _drop_failed_trial_record(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Trial ")


def _quiet_failed_trials() -> None:
    """Optuna warns of each failed trial with the whole traceback (and again with its value);
    _log_trial already reports it in one line, and a Ctrl-C that lands inside a trial must not
    print a traceback of Optuna's storage code."""
    logger = logging.getLogger("optuna.study._optimize")
    if _drop_failed_trial_record not in logger.filters:
        logger.addFilter(_drop_failed_trial_record)


def _optimize(
    study,
    runner: TrialRunner,
    trials: int | None,
    timeout: float | None,
    progress: Progress,
    grid: bool = False,
) -> None:
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if trials is not None and done >= trials:
        progress.log(f"study '{study.study_name}' already holds {done} finished trials (--trials {trials})")
        return
    if done:
        progress.log(f"joining study '{study.study_name}': {done} finished trials so far")
    callbacks = [lambda s, t: _log_trial(progress, t, trials)]
    callbacks.append(_stop_when_grid_done if grid else FrontCrossover(runner.space, runner.constraints))
    if trials is not None:
        callbacks.insert(0, _stop_at(trials))
    total = (trials - done) if trials is not None else None
    label = f"searching: {trials} finished trials" if trials is not None else "searching until the timeout"
    deadline = None if timeout is None else time.monotonic() + timeout
    with progress.task(label, total=total) as advance:

        def tick(s, t):
            if t.state in finished:
                advance(1)

        callbacks.append(tick)
        # A trial that crashes is recorded as failed (with its error) and the search goes on;
        # the stop comes from _stop_at (counting every worker's trials) or the timeout.
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                study.optimize(
                    runner, timeout=left, callbacks=callbacks, catch=(Exception,), gc_after_trial=True
                )
                return
            except ValueError as exc:
                # Optuna's RDB storage can hand one queued trial to two workers at once
                # (optuna#4621, seen with SQLite under load): the second to finish cannot
                # tell it. Its result duplicates the other's; the worker goes on.
                if not str(exc).startswith("Cannot tell a "):
                    raise
                progress.log(
                    f"a queued trial was also run by another worker, which finished it first ({exc})"
                )


def _stop_at(trials: int):
    """Stop once the study holds ``trials`` finished trials, every worker's counted, but not
    while the retry of a dead worker's trial is still queued: it runs first (at most the few
    crossover points queued before it run too)."""
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < trials:
            return
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not any("failed_trial" in t.system_attrs for t in waiting):
            study.stop()

    return callback


def _stop_when_grid_done(study, trial) -> None:
    """A grid study ends when its queue of points is empty (other samplers queue a few
    starting points only, and go on)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.stop()


def _log_trial(progress: Progress, t, trials: int | None) -> None:
    a = t.user_attrs
    what = a.get("summary", "?")
    if t.state.name == "COMPLETE":
        line = (
            f"trial {t.number}: {what}: drop {a['drop']:+.4f}, {a['latency_ms']:.4f} ms, "
            f"{a['size_bytes'] / 1e3:,.1f} kB"
        )
        if "same_as" in a:
            line += f" (same choices as trial {a['same_as']})"
    elif t.state.name == "PRUNED":
        line = f"trial {t.number}: {what}: pruned ({a.get('reason', '')[:160]})"
    else:
        line = f"trial {t.number}: {what}: {t.state.name.lower()} ({_fail_reason(t)[:160]})"
    progress.log(line)


def _fail_reason(t) -> str:
    """The last line of the error Optuna recorded for a failed trial."""
    text = str(t.system_attrs.get("fail_reason") or t.user_attrs.get("reason") or "").strip()
    if text:
        return text.splitlines()[-1]
    # Optuna records no message when it fails a trial whose worker's heartbeat stopped
    return f"its worker ({t.user_attrs.get('worker', 'unknown')}) stopped: killed, or lost its connection"


# ------------------------------------------------------------------ results


def _rows(study, constraints: Constraints) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(t.state.name)
        if state is None:
            continue  # running or waiting: another worker's
        row = {
            "number": t.number,
            "state": state,
            "summary": a.get("summary", ""),
            "recipe": a.get("recipe"),
            "worker": a.get("worker"),
            "feasible": False,
            "on_front": False,
            "reason": a.get("reason"),
        }
        if state == "complete" and "drop" in a:
            row.update({k: a[k] for k in OBJECTIVES})
            row["feasible"] = constraints.met(a)
            if not row["feasible"]:
                row["reason"] = _violation_text(a, constraints)
        elif state == "failed":
            row["reason"] = _fail_reason(t)
        rows.append(row)
    return rows


def _violation_text(a: dict, c: Constraints) -> str:
    parts = []
    if a["drop"] > c.max_drop + 1e-12:
        parts.append(f"drop {a['drop']:.4f} > {c.max_drop}")
    if c.max_latency_ms is not None and a["latency_ms"] > c.max_latency_ms:
        parts.append(f"{a['latency_ms']:.4f} ms > --max-latency-ms {c.max_latency_ms:g}")
    if c.max_size_bytes is not None and a["size_bytes"] > c.max_size_bytes:
        parts.append(f"{a['size_bytes'] / 1e6:.3f} MB > --max-size-mb {c.max_size_bytes / 1e6:g}")
    return "misses " + "; ".join(parts)


def _nothing_feasible(rows: list[dict], c: Constraints, primary: str) -> str:
    complete = [r for r in rows if r["state"] == "complete" and "drop" in r]
    if not complete:
        pruned = sum(r["state"] == "pruned" for r in rows)
        return (
            f"No trial finished within the {primary} budget (--max-drop {c.max_drop}): {pruned} of "
            f"{len(rows)} broke it or could not run. Nothing was written. Raise --max-drop, give more "
            "--trials, or other --techniques."
        )
    best = [f"smallest drop {min(r['drop'] for r in complete):.4f}"]
    if c.max_latency_ms is not None:
        best.append(f"fastest {min(r['latency_ms'] for r in complete):.4f} ms (limit {c.max_latency_ms:g})")
    if c.max_size_bytes is not None:
        best.append(
            f"smallest {min(r['size_bytes'] for r in complete) / 1e6:.3f} MB "
            f"(limit {c.max_size_bytes / 1e6:g})"
        )
    return (
        f"No trial meets all the constraints together ({len(complete)} finished: {', '.join(best)}). "
        "Nothing was written. Loosen --max-latency-ms / --max-size-mb / --max-drop, or give more --trials."
    )


def _retime(
    prepared: Prepared,
    feasible: list[dict],
    models: Path,
    c: Constraints,
    reference_ms: float | None,
    progress: Progress,
) -> float:
    """Time this worker's front candidates together with the baseline in one interleaved run:
    each trial was timed at its own moment, and a shared machine drifts between them.

    The candidates are the points no other one beats by more than ``LATENCY_NOISE``
    (:func:`near_front`), so a point that only a noisy trial timing put behind another is
    timed again beside it. Should a point left out become a front point once its dominator's
    re-timing came out slower (the noise was wider than ``LATENCY_NOISE``), it joins the
    candidates and the whole set is timed again: every front point with a model here is
    compared within one run. Returns the factor that brings the new timings to the trials'
    scale (the baseline's time at the start of the search over its time now).
    """
    run = prepared.run
    numbers = {r["number"] for r in near_front(feasible, LATENCY_NOISE)}
    scale = 1.0
    while True:
        local = {n: models / f"{n}.onnx" for n in sorted(numbers) if (models / f"{n}.onnx").is_file()}
        if not local:
            return scale
        paths = {str(n): p for n, p in local.items()}
        if prepared.baseline is not None:
            paths["baseline"] = prepared.baseline
        with progress.task(
            f"re-timing the front's {len(local)} candidate models together (interleaved rounds)"
        ):
            timing = time_latency(paths, run.evaluation.timing_row(), run.bench)
        scale = reference_ms / timing["baseline"].p50_ms if reference_ms and "baseline" in timing else 1.0
        for r in feasible:
            t = timing.get(str(r["number"]))
            if t is None:
                continue
            r["retimed_ms"] = t.p50_ms
            if c.max_latency_ms is not None and t.p50_ms > c.max_latency_ms:
                r["feasible"] = False
                r["reason"] = (
                    f"re-timed with the front at {t.p50_ms:.4f} ms > --max-latency-ms {c.max_latency_ms:g}"
                )
        front = _front([r for r in feasible if r["feasible"]], scale)
        missed = {
            r["number"]
            for r in front
            if r.get("retimed_ms") is None and (models / f"{r['number']}.onnx").is_file()
        }
        if not missed:
            return scale
        numbers |= missed


def _timed_together(rows: list[dict], scale: float) -> list[dict]:
    """Views of ``rows`` whose latency is the re-timing's where there is one (on the trials'
    scale), so that re-timed points are compared by the one run that timed them together."""
    return [
        {**r, "latency_ms": r["retimed_ms"] * scale} if r.get("retimed_ms") is not None else r for r in rows
    ]


def _front(feasible: list[dict], scale: float) -> list[dict]:
    """The rows on the Pareto front of their latencies as re-timed together (trial timings
    for the points another worker ran)."""
    on = {v["number"] for v in pareto_front(_timed_together(feasible, scale))}
    return [r for r in feasible if r["number"] in on]


def _final(prepared: Prepared, front: list[dict], pick: str, scale: float, progress: Progress):
    """Re-run the front's best point for ``pick`` as a full compress run (the next one if a
    re-run misses the budget: training is not bit-reproducible on every machine)."""
    failures = []
    # Trials were timed at their own moments; the front's re-timing is one comparable run.
    order = ordered(_timed_together(front, scale), pick)
    rows = [next(r for r in front if r["number"] == o["number"]) for o in order]
    for row in rows:
        recipe = Recipe(
            **{
                **row["recipe"],
                "name": "auto",
                "description": f"found by presso search (trial {row['number']}): {row['summary']}",
            }
        )
        progress.log(f"re-running trial {row['number']} ({row['summary']}) as the result, measured in full")
        workdir = new_workdir()  # beside the search's folder, not inside it: the result keeps it
        run = replace(prepared.run, workdir=workdir)
        try:
            result = run_recipe(
                Prepared(run, prepared.baseline, prepared.seed, prepared.calibration_fraction), recipe
            )
            return result, row["number"]
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)  # the result owns it only when there is one
            if not isinstance(exc, BudgetError):
                raise
            failures.append(f"trial {row['number']}: {str(exc)[:160]}")
    raise BudgetError("Every point of the front missed the budget when re-run: " + "; ".join(failures))


def _report_section(
    study,
    url: str,
    sampler: str,
    pick: str,
    picked: int,
    c: Constraints,
    space: SearchSpace,
    rows: list[dict],
    scale: float,
    seconds: float,
) -> Search:
    from presso.report.schema import Search, SearchTrial

    trials = [
        SearchTrial.model_validate(
            {
                k: r.get(k)
                for k in (
                    "number",
                    "state",
                    "summary",
                    "drop",
                    "latency_ms",
                    "size_bytes",
                    "feasible",
                    "on_front",
                    "retimed_ms",
                    "reason",
                    "worker",
                )
            }
            | {"recipe_file": f"trials/{r['number']:04d}.yaml" if r.get("recipe") else None}
        )
        for r in rows
    ]
    return Search(
        study=study.study_name,
        storage=redact(url),
        sampler=sampler,
        pick=pick,
        picked=picked,
        objectives=list(OBJECTIVES),
        constraints={
            "max_drop": c.max_drop,
            "max_latency_ms": c.max_latency_ms,
            "max_size_mb": None if c.max_size_bytes is None else c.max_size_bytes / 1e6,
        },
        space=space.grid(),
        trials=trials,
        seconds=round(seconds, 1),
        retime_scale=scale,
    )


def _write_trials(out: Path, rows: list[dict]) -> None:
    """Each trial's recipe as a file ``presso compress --recipe`` re-runs."""
    folder = out / "trials"
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if r.get("recipe"):
            recipe = Recipe(
                **{**r["recipe"], "description": f"trial {r['number']} of presso search: {r['summary']}"}
            )
            write_text_atomic(folder / f"{r['number']:04d}.yaml", recipe.to_yaml())


def save_search(found: SearchResult, out: str | Path) -> Path:
    """The chosen artifact into the search folder (beside study.db and trials/), plus
    search.json with every trial."""
    import json

    out = Path(out)
    check_search_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_trials(out, found.trials)
    found.result.save_into(out)
    if found.front_models:
        (out / "front").mkdir(exist_ok=True)
        for number, model in found.front_models.items():
            with atomic_path(out / "front" / f"{number:04d}.onnx") as tmp:
                shutil.copyfile(model, tmp)
    search_json = found.result.report.search.model_dump(mode="json") if found.result.report.search else {}
    write_text_atomic(out / "search.json", json.dumps(search_json, indent=2))
    return out
