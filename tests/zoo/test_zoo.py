"""The zoo through int8 and each entry's structural recipe: the artifact runs in plain
onnxruntime and gives the reported metric, the fp32 export matched PyTorch, the budget
held, or the refusal was one line.

int8 runs for every entry in the default run; the structural recipes fine-tune, so they
carry the e2e marker (``-m e2e``).
"""

from __future__ import annotations

import pytest
from zoo.harness import held_out, onnx_outputs, reference, run, score
from zoo.models import TECHNIQUES, ZOO, Case

from presso.tasks import drop

_CASES: dict[str, Case] = {}


def _case(name: str, tmp_path_factory) -> Case:
    """Each model is built and trained once, for both techniques."""
    if name not in _CASES:
        _CASES[name] = ZOO[name].make(tmp_path_factory.mktemp(name))
    return _CASES[name]


def _params(technique: str):
    marks = [pytest.mark.e2e] if technique == "structural" else []
    return [
        pytest.param(
            name,
            marks=marks,
            id=name,
        )
        for name, entry in ZOO.items()
        if technique == "int8" or entry.structural is not None
    ]


def _check(name: str, technique: str, tmp_path, tmp_path_factory) -> None:
    entry = ZOO[name]
    case = _case(name, tmp_path_factory)
    outcome = run(entry, technique, tmp_path, case)
    expected = entry.expected(technique)
    assert outcome.matches(expected), f"{name} / {technique}: expected {expected!r}, got {outcome.cell()}"
    if outcome.status == "refused":
        assert "\n" not in outcome.reason and "Traceback" not in outcome.reason
        return
    report = outcome.report
    assert report is not None and outcome.artifact is not None
    # fp32 export parity, measured on the held-out rows.
    assert report["reference"]["export_max_abs_diff"] < 1e-3
    budget = report["budget"]
    assert budget["passed"] and budget["drop"] <= case.max_drop + 1e-9
    # The artifact alone, in plain onnxruntime, gives the metric the report states.
    rows, y = held_out(case, [i["name"] for i in report["inputs"]])
    out = onnx_outputs(outcome.artifact / "model.onnx", rows)
    metric = budget["primary_metric"]
    value = score(metric, out, reference(case, rows), y)
    one_row = 1.0 / len(out) + 1e-9 if "accuracy" in metric or metric == "agreement" else 1e-4
    assert value == pytest.approx(budget["compressed"], abs=one_row, rel=1e-3)
    # ... and keeps the budget there, in the budget's own terms (a relative increase of MAE).
    assert drop(metric, budget["baseline"], value) <= case.max_drop + one_row


@pytest.mark.int8_kernel
@pytest.mark.parametrize("name", _params("int8"))
def test_int8(name, tmp_path, tmp_path_factory):
    _check(name, "int8", tmp_path, tmp_path_factory)


@pytest.mark.parametrize("name", _params("structural"))
def test_structural(name, tmp_path, tmp_path_factory):
    _check(name, "structural", tmp_path, tmp_path_factory)


def test_every_technique_has_an_expectation_and_the_zoo_is_large_enough():
    assert len(ZOO) >= 25
    for entry in ZOO.values():
        for technique in TECHNIQUES:
            assert entry.expected(technique) == "works" or entry.expected(technique).startswith("refused: ")
