"""One trial: run the recipe a trial's choices spell on the prepared model and measure the
three objectives — quality drop on the held-out rows, batch-1 latency on ONNX Runtime on
this machine (timed interleaved with the baseline), and the model file's size.

Trials are cheap where they can be: the original model's outputs, the split and the fp32
baseline are made once for the whole search (:func:`presso.recipe.runner.prepare`); a
trial ends at the first stage that breaks the quality budget (pruned: later stages never
run); and a trial whose choices equal a finished trial's reuses its figures instead of
training the same model again (categorical samplers repeat points).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from presso.errors import BudgetError, NothingToDo, PressoError
from presso.measure.bench import BenchSettings, time_latency
from presso.measure.size import file_size, parameter_count
from presso.progress import SILENT
from presso.recipe.runner import Prepared, resolved_recipe, run_stages
from presso.recipe.schema import Settings
from presso.search.space import SearchSpace, describe_stages

OBJECTIVES = ("drop", "latency_ms", "size_bytes")


@dataclass
class Constraints:
    max_drop: float
    max_latency_ms: float | None = None
    max_size_bytes: int | None = None

    def violations(self, attrs: dict) -> dict[str, float]:
        """Optuna's convention: a value <= 0 per constraint means it is met."""
        out = {"max_drop": attrs["drop"] - self.max_drop}
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = attrs["latency_ms"] - self.max_latency_ms
        if self.max_size_bytes is not None:
            out["max_size_bytes"] = attrs["size_bytes"] - self.max_size_bytes
        return out

    def met(self, attrs: dict) -> bool:
        return all(v <= 1e-12 for v in self.violations(attrs).values())


class TrialRunner:
    """The objective Optuna calls: choices -> recipe -> stages -> (drop, latency, size)."""

    def __init__(
        self,
        prepared: Prepared,
        space: SearchSpace,
        settings: Settings,
        constraints: Constraints,
        *,
        rounds: int = 5,
        keep_models: Path | None = None,
        reference_ms: float | None = None,
    ):
        self.prepared, self.space, self.settings, self.constraints = prepared, space, settings, constraints
        self.rounds = rounds
        self.keep_models = keep_models  # where each finished trial's model is kept (re-timing the front)
        # The baseline's batch-1 p50 from one full timing at the start of the search: each trial
        # is timed against the baseline in the same rounds and reported at that scale, so a
        # machine that is busier during one trial than another does not reorder them.
        self.reference_ms = reference_ms
        run = prepared.run
        self.baseline_value = run.baseline_metrics()[run.primary]

    def __call__(self, trial) -> tuple[float, float, float]:
        import optuna

        trial.set_user_attr("worker", worker_name())  # which machine and process ran it
        params = self.space.suggest(trial)
        recipe = self.space.recipe(params, f"trial-{trial.number}", self.settings)
        if recipe is None:
            trial.set_user_attr("reason", "no stage chosen: nothing to compress")
            raise optuna.TrialPruned("no stage chosen")
        trial.set_user_attr("summary", recipe.description)
        same = _finished_twin(trial, self.space.active(params))
        if same is not None:
            for key, value in same.user_attrs.items():
                if key not in ("worker", "seconds"):  # its own worker; it trained nothing
                    trial.set_user_attr(key, value)
            trial.set_user_attr("same_as", same.number)
            keep = self.keep_models
            # The front may hold the repeat, not the first.
            if keep is not None and (keep / f"{same.number}.onnx").is_file():
                shutil.copyfile(keep / f"{same.number}.onnx", keep / f"{trial.number}.onnx")
            if same.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(same.user_attrs.get("reason", "pruned"))
            self._constrain(trial, same.user_attrs)
            return tuple(same.values)
        start = time.perf_counter()
        attrs = self._run(trial.number, recipe)
        attrs["seconds"] = round(time.perf_counter() - start, 2)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if "reason" in attrs:
            raise optuna.TrialPruned(attrs["reason"])
        self._constrain(trial, attrs)
        return attrs["drop"], attrs["latency_ms"], attrs["size_bytes"]

    def _constrain(self, trial, attrs: dict) -> None:
        """The constraints as Optuna reads them (<= 0: met): TPE and NSGA-II prefer feasible points."""
        for name, value in self.constraints.violations(attrs).items():
            trial.set_constraint(name, value)

    def _run(self, number: int, recipe) -> dict:
        prepared = self.prepared
        workdir = prepared.run.workdir / f"trial-{number}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        run = replace(prepared.run, workdir=workdir, progress=SILENT)
        try:
            done = run_stages(run, recipe, prepared.baseline, prepared.seed)
            resolved = resolved_recipe(
                recipe, done.outcomes, run, prepared.seed, prepared.calibration_fraction
            )
            skipped = [o.technique for o in done.outcomes if o.skipped]
            drop = run.drop(self.baseline_value, done.metrics[run.primary])
            paths = {"trial": done.path}
            if prepared.baseline is not None:
                paths["baseline"] = prepared.baseline
            quick = BenchSettings(rounds=self.rounds, round_seconds=0.2, threads=run.bench.threads)
            timing = time_latency(paths, run.evaluation.timing_row(), quick)
            measured = timing["trial"].p50_ms
            latency = measured
            if self.reference_ms is not None and "baseline" in timing:
                latency = round(measured * self.reference_ms / timing["baseline"].p50_ms, 4)
            attrs: dict[str, Any] = {
                "drop": round(float(drop), 6),
                "quality": round(float(done.metrics[run.primary]), 6),
                "latency_ms": latency,
                "measured_ms": measured,
                "size_bytes": file_size(done.path),
                "parameters": parameter_count(done.path),
                "baseline_latency_ms": timing["baseline"].p50_ms if "baseline" in timing else None,
                "recipe": resolved.model_dump(mode="json", exclude_defaults=True),
            }
            if skipped:  # an optional stage that broke the budget or had nothing to do: say what ran
                attrs["summary"] = describe_stages(resolved.stages) + f" ({', '.join(skipped)} skipped)"
            if self.keep_models is not None:
                self.keep_models.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(done.path, self.keep_models / f"{number}.onnx")
            return attrs
        except (BudgetError, NothingToDo) as exc:
            return {"reason": _short(exc), "recipe": recipe.model_dump(mode="json", exclude_defaults=True)}
        except PressoError as exc:  # a choice this model cannot take (e.g. a depth it does not have)
            return {
                "reason": "cannot run: " + _short(exc),
                "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
            }
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def worker_name() -> str:
    """``host:pid`` of this worker: a shared study records which machine ran each trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _finished_twin(trial, params: dict):
    """A finished trial of this study with the very same active choices, if any."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in trial.study.get_trials(deepcopy=False, states=states):
        if other.params == params and ("drop" in other.user_attrs or "reason" in other.user_attrs):
            return other
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).split(". Nothing was written")[0]
    return text[:300]
