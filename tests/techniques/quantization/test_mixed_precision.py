"""Mixed precision: per-layer sensitivity, then the fewest most sensitive layers fall back."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import presso
from presso.measure import BenchSettings
from presso.techniques.base import Candidate, Score, StageContext
from presso.techniques.quantization.accuracy_aware import FP32, search

QUICK = BenchSettings(rounds=1, throughput_batch=8)


def _context(tmp_path) -> StageContext:
    return StageContext(workdir=tmp_path, calibration=None, score=None, time_models=None, transformer=None)


def _additive(costs: dict[str, float], budget: float, calls: list):
    """A model whose drop is the sum of the costs of its quantized layers."""

    def attempt(name: str, precision: dict[str, str]) -> Candidate:
        calls.append(name)
        drop = sum(c for n, c in costs.items() if precision.get(n) != FP32)
        return Candidate(name, None, score=Score("accuracy", 1 - drop, drop, drop <= budget, {}))

    return attempt


def test_search_keeps_the_fewest_most_sensitive_layers_float(tmp_path):
    costs = {f"l{i}": c for i, c in enumerate([0.001, 0.2, 0.002, 0.05, 0.0, 0.03, 0.001, 0.004])}
    calls: list[str] = []
    attempt = _additive(costs, budget=0.01, calls=calls)
    first = attempt("all", {})
    found = search(first, list(costs), {}, attempt, [FP32], "q", _context(tmp_path))
    # l1, l3 and l5 cost 0.28 together; dropping just those three leaves 0.008 <= 0.01.
    assert set(found.precision) == {"l1", "l3", "l5"}
    assert found.chosen.score.passed and abs(found.chosen.score.drop - 0.008) < 1e-12
    assert found.sensitivity == costs
    # n sensitivity runs + doubling (1, 2, 4) + bisection (3): not one scoring per count.
    assert len(calls) == 1 + len(costs) + 4
    # The passing count found by doubling is kept as a backup for the held-out check.
    assert [c.name for c in found.backups] == ["q+4-fp32"]
    assert found.fallback_of["q+4-fp32"] == {"l1": FP32, "l3": FP32, "l5": FP32, "l7": FP32}


def test_search_never_returns_an_all_float_model(tmp_path):
    costs = {"a": 0.5, "b": 0.5}
    calls: list[str] = []
    attempt = _additive(costs, budget=0.0, calls=calls)
    found = search(attempt("all", {}), list(costs), {}, attempt, [FP32], "q", _context(tmp_path))
    assert found.chosen is None  # keeping both float would be the original model


def test_search_tries_the_safer_precision_before_fp32(tmp_path):
    costs = {"a": 0.3, "b": 0.001}
    calls: list[str] = []

    def attempt(name, precision):
        calls.append(name)
        drop = sum(0.0 if precision.get(n) in (FP32, "int8") else c for n, c in costs.items())
        return Candidate(name, None, score=Score("accuracy", 1 - drop, drop, drop <= 0.01, {}))

    found = search(attempt("all", {}), list(costs), {}, attempt, ["int8", FP32], "q", _context(tmp_path))
    assert found.precision == {"a": "int8"}


class _Fragile(nn.Module):
    """The middle layer's groups of 32 inputs each hold one large weight that meets an
    always-zero input: harmless in float, but 4 bits per group then round the small
    informative weights to a few levels, while 8 bits keep them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def make_fragile(self):
        with torch.no_grad():
            self.a.weight[::32] = 0.0
            self.a.bias[::32] = -1.0  # relu -> these inputs of b are always 0
            self.b.weight[:, ::32] = 8.0 * self.b.weight.abs().max()
        return self

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _trained_fragile():
    """Trained on 10 separable clusters, so predictions have real margins."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=1200)
    x = (centers[y] + 1.3 * rng.normal(size=(1200, 64))).astype(np.float32)
    model = _Fragile().make_fragile()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:600]), torch.from_numpy(y[:600])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.make_fragile().eval(), x[600:], y[600:]


def test_int4_falls_back_to_8_bits_for_the_sensitive_layer():
    model, x, y = _trained_fragile()
    result = presso.compress(model, "int4", data=(x, y), bench=QUICK)
    assert result.report.budget.passed
    layers = {row["node"]: row for row in result.report.stages[0].layers}
    by_sensitivity = sorted(
        (r for r in layers.values() if "sensitivity" in r), key=lambda r: -r["sensitivity"]
    )
    worst = by_sensitivity[0]
    assert worst["precision"] == "int8" and "fell back to int8" in worst["reason"]
    assert worst["sensitivity"] > 0.01  # alone it breaks the budget
    assert [r["precision"] for r in by_sensitivity[1:]] == ["int4", "int4"]
    assert result.recipe.stages[0].options["precision"] == {worst["node"]: "int8"}
    # The pinned recipe re-runs to the same precisions.
    again = presso.compress(model, result.recipe, data=(x, y), bench=QUICK)
    assert {r["node"]: r["precision"] for r in again.report.stages[0].layers} == {
        n: r["precision"] for n, r in layers.items()
    }
