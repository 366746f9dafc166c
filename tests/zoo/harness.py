"""Run one zoo entry through one technique, and re-score its artifact independently.

Shared by tests/zoo/test_zoo.py and scripts/support_matrix.py: the matrix says what the
tests see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch
from zoo.models import Case, Entry, recipe

import presso
from presso.measure import BenchSettings

QUICK = BenchSettings(rounds=1, round_seconds=0.02, throughput_batch=8)


@dataclass
class Outcome:
    status: str  # "works" or "refused"
    reason: str = ""  # the one-line PressoError / BudgetError message when refused
    artifact: Path | None = None
    report: dict | None = None

    def cell(self) -> str:
        """The support-matrix cell: "works (drop 0.0012, 2.1x smaller)" / "refused: reason"."""
        if self.status != "works":
            return f"refused: {_short(self.reason)}"
        assert self.report is not None
        drop, size = self.report["budget"]["drop"], self.report["ratios"]["size"]
        return f"works (drop {drop:.4f}, {size:.1f}x smaller)"

    def matches(self, expected: str) -> bool:
        if expected == "works":
            return self.status == "works"
        return self.status == "refused" and expected.removeprefix("refused: ") in self.reason


def _short(reason: str, limit: int = 140) -> str:
    reason = reason.replace("|", "/")
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def run(entry: Entry, technique: str, workdir: Path, case: Case | None = None) -> Outcome:
    """compress(entry's model, technique) into ``workdir/artifact``; a refusal is an Outcome."""
    case = case or entry.make(workdir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads add only synchronisation (and contention)
    # Peak memory is measured in a fresh process per model (seconds each): not what the zoo checks.
    try:
        with patch("presso.recipe.measure.peak_memory_mb", lambda *a, **k: None):
            result = presso.compress(
                case.model,
                recipe(entry, technique),
                data=case.data,
                task=case.task,
                max_drop=case.max_drop,
                seq_len=case.seq_len,
                bench=QUICK,
            )
    except presso.PressoError as exc:  # BudgetError is one too
        return Outcome("refused", str(exc))
    finally:
        torch.set_num_threads(threads)
    out = result.save(workdir / f"artifact-{technique}")
    return Outcome("works", artifact=out, report=json.loads((out / "report.json").read_text()))


# ---------------------------------------------------------------- independent re-scoring


def held_out(case: Case, model_inputs: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The held-out rows presso measured on: its seeded split (seed 0, 30% calibration) of
    the rows given, read here with numpy only (texts tokenized as presso's loader does)."""
    if isinstance(case.data, list | tuple):  # texts, or (texts, labels)
        from presso.data.sources import from_texts
        from presso.model.sources import load_model

        texts, target = (case.data, None) if isinstance(case.data, list) else case.data
        loaded = load_model(case.model)
        inputs = from_texts(texts, loaded.input_names, loaded.tokenizer, case.seq_len).inputs
    else:
        inputs = {k: np.asarray(v) for k, v in case.data.items() if k != "y"}
        target = case.data.get("y")
    n = len(next(iter(inputs.values())))
    index = split_index(n)
    rows = {k: inputs[k][index] for k in model_inputs}
    return rows, None if target is None else np.asarray(target)[index]


def split_index(n: int, seed: int = 0, calibration_fraction: float = 0.3) -> np.ndarray:
    """The held-out row numbers of presso's documented split: a seeded permutation whose
    first 30% calibrate."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = min(max(1, round(n * calibration_fraction)), n - 2)
    return np.sort(order[n_cal:])


def onnx_outputs(model_onnx: Path, rows: dict[str, np.ndarray]) -> np.ndarray:
    """Outputs of model.onnx in plain onnxruntime, one row at a time (as presso measures)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    n = len(next(iter(rows.values())))
    outs = [session.run(None, {k: rows[k][i : i + 1] for k in names})[0] for i in range(n)]
    return np.concatenate(outs).astype(np.float32)


def reference(case: Case, rows: dict[str, np.ndarray]) -> np.ndarray:
    """The original model's outputs (PyTorch) on ``rows``."""
    import torch

    from presso.model.loaded import first_tensor

    if isinstance(case.model, torch.nn.Module):
        with torch.no_grad():
            return first_tensor(case.model(*[torch.from_numpy(v) for v in rows.values()])).numpy()
    from presso.model.sources import load_model

    return load_model(case.model).run_torch(rows)


def score(metric: str, out: np.ndarray, ref: np.ndarray, y: np.ndarray | None) -> float:
    """The report's budget metric, computed here with numpy (not presso's metrics code)."""
    if metric == "agreement":
        return float(np.mean(out.argmax(1) == ref.argmax(1)))
    if metric == "accuracy":
        return float(np.mean(out.argmax(1) == y))
    if metric == "balanced_accuracy":
        assert y is not None
        pred = out.argmax(1)
        return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))
    if metric in ("r2", "r2_to_original", "mae", "rmse"):
        t = (ref if metric == "r2_to_original" else y).reshape(len(out), -1)
        o = out.reshape(len(out), -1)
        if metric == "mae":
            return float(np.mean(np.abs(t - o)))
        if metric == "rmse":
            return float(np.sqrt(np.mean((t - o) ** 2)))
        r2 = 1.0 - ((t - o) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)
        return float(np.mean(r2))
    assert metric == "mean_cosine", metric
    o, r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    cos = (o * r).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1))
    return float(np.mean(cos))
