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

# Temporary: "entry:technique" runs that need a parallel branch not merged yet (checked on a
# scratch merge with main at f27d5d9: every one below then passes). The lead empties this
# after merging wt-zoo.
PENDING = {
    # wt-export: the fast-path attention ops (aten::_transformer_encoder_layer_fwd,
    # aten::_native_multi_head_attention) have no ONNX export before it.
    "transformer-encoder:int8",
    "transformer-encoder:structural",
    "multihead-attention:int8",
    "multihead-attention:structural",
    # wt-struct: slim locates encoder blocks structurally (and refuses MPNet's and ALBERT's
    # heads with its reasons); before it, slim knows only BERT's attribute names.
    "vit:structural",
    *[
        f"hf-{family}-{kind}:structural"
        for family in ("distilbert", "mpnet", "albert", "deberta-v2")
        for kind in ("encoder", "classifier")
    ],
}

_PENDING_MARK = pytest.mark.skip(reason="PENDING: needs a parallel branch not merged yet")
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
            marks=[*marks, *([_PENDING_MARK] if f"{name}:{technique}" in PENDING else [])],
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
    metric, value = score(case.task, out, reference(case, rows), y)
    assert metric == budget["primary_metric"]
    one_row = 1.0 / len(out) + 1e-9 if metric in ("accuracy", "agreement") else 1e-4
    assert value == pytest.approx(budget["compressed"], abs=one_row)


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
