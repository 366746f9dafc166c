"""The quality budget: refusal when int8 cannot meet it, mixed-precision fall-back of the
most sensitive layers to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MLP_FACTORY, decided_rows, run_cli
from torch import nn

import presso
from presso.measure import BenchSettings
from presso.measure.metrics import one_row_drop, unresolved_budget
from presso.progress import Progress
from presso.recipe.schema import Recipe, Stage

QUICK = BenchSettings(rounds=1, throughput_batch=8)


class OutlierInput(nn.Module):
    """Depends only on 15 small features; feature 0 spans +-1e4 but has weight 0.

    Any int8 activation quantization of the whole input row uses a step of ~80, which
    rounds the 15 informative features to zero: quantizing the first layer is fatal.
    """

    def __init__(self, depth: int):
        super().__init__()
        torch.manual_seed(0)
        first = nn.Linear(16, 32)
        with torch.no_grad():
            first.weight[:, 0] = 0.0
        layers = [first, nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        layers.append(nn.Linear(32, 4))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():  # larger weights, no biases: every class gets predicted
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    layer.weight.mul_(3.0)
                    layer.bias.zero_()

    def forward(self, x):
        return self.net(x)


def _data(model):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    x[:, 0] = rng.uniform(-1e4, 1e4, size=400)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return x, y


def _single_layer():
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    with torch.no_grad():
        model.weight[:, 0] = 0.0
    return model


def _mlp() -> nn.Module:
    namespace: dict = {}
    exec(MLP_FACTORY, namespace)
    return namespace["build"]().eval()


@pytest.mark.int8_kernel
def test_refuses_when_no_variant_meets_the_budget(tmp_path):
    model = _single_layer()
    x, y = _data(model)
    # One weighted layer whose quantization is fatal: keeping it fp32 is no compression.
    with pytest.raises(presso.BudgetError, match="No int8 variant keeps the accuracy drop within"):
        presso.compress(model, "int8", data=(x, y), bench=QUICK)


@pytest.mark.int8_kernel
def test_refusal_from_the_cli_exits_1_and_writes_nothing(tmp_path):
    factory = tmp_path / "outlier.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    torch.manual_seed(0)\n    m = nn.Linear(16, 4)\n"
        "    with torch.no_grad():\n        m.weight[:, 0] = 0.0\n    return m\n"
    )
    namespace: dict = {}
    exec(factory.read_text(), namespace)
    x, y = _data(namespace["build"]())
    np.savez(tmp_path / "d.npz", X=x, y=y)
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        f"{factory}:build",
        "--data",
        str(tmp_path / "d.npz"),
        "--out",
        str(out),
        "--rounds",
        "1",
        "--quiet",
    )
    assert done.returncode == 1, done.stderr
    assert "No int8 variant" in done.stderr and "Nothing was written" in done.stderr
    assert not out.exists()


@pytest.mark.int8_kernel
def test_most_sensitive_layer_falls_back_to_fp32(tmp_path):
    model = OutlierInput(depth=3)  # 4 weighted layers; only the first sees the outlier feature
    x, y = _data(model)
    result = presso.compress(model, "int8", data=(x, y), bench=QUICK, max_drop=0.05)
    stage = result.report.stages[0]
    assert result.report.budget.passed and result.report.budget.drop <= 0.05
    rows = {row["node"]: row for row in stage.layers if "sensitivity" in row}
    assert len(rows) == 4  # every weighted layer's sensitivity was measured
    first, *rest = sorted(rows.values(), key=lambda r: -r["sensitivity"])
    # Quantized alone, the first layer costs most of the accuracy; the others almost none.
    assert first["sensitivity"] > 0.5 and all(r["sensitivity"] < 0.05 for r in rest)
    assert first["precision"] == "fp32" and "fell back to fp32" in first["reason"]
    assert all(r["precision"] == "int8" for r in rest)  # only the one layer stayed float
    assert result.recipe.stages[0].options["keep_float"] == [first["node"]]
    # The plain variants failed on calibration rows, and the report says by how much.
    plain = [v for v in stage.variants if "+" not in v["variant"] and v["calibration_drop"] is not None]
    assert plain and all(v["calibration_drop"] > 0.5 for v in plain)
    assert stage.chosen.endswith("+1-fp32")
    # The pinned recipe is valid and re-runs to the same layer kept float.
    again = presso.compress(model, result.recipe, data=(x, y), bench=QUICK, max_drop=0.05)
    assert [r["node"] for r in again.report.stages[0].layers if r["precision"] == "fp32"] == [first["node"]]


@pytest.mark.int8_kernel
def test_max_drop_zero_is_honoured_exactly(tmp_path):
    ex = presso.load_example("tabular")
    result = presso.compress(ex.model, "int8", data=ex.data, task=ex.task, max_drop=0.0, bench=QUICK)
    assert result.report.budget.drop <= 0.0
    assert result.report.budget.max_drop == 0.0


# ---------------------------------------------------------------- the budget's resolution

FP16 = Recipe(name="fp16", stages=[Stage(technique="weight-only", options={"scheme": "float16"})])


class _Warnings(Progress):
    def __init__(self):
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(message)


def test_a_budget_finer_than_one_row_is_named_with_its_fix():
    assert unresolved_budget("accuracy", 0.01, {"calibration": 90, "held-out": 210}) == [
        "with 90 calibration rows, one changed prediction drops accuracy by 0.0111: --max-drop 0.01 allows "
        "none on them (give at least 100 calibration rows, or --max-drop 0.0111 or more)"
    ]
    assert unresolved_budget("accuracy", 0.01, {"held-out": 100}) == []  # one row is exactly the budget
    assert unresolved_budget("agreement", 0.005, {"held-out": 150})[0].startswith(
        "with 150 held-out rows, one changed prediction drops agreement by 0.0067"
    )
    assert unresolved_budget("accuracy", 0.0, {"held-out": 10}) == []  # no change at all is what was asked
    assert unresolved_budget("r2", 0.01, {"held-out": 10}) == []  # continuous metrics have no step
    assert one_row_drop("accuracy", 90) == pytest.approx(1 / 90) and one_row_drop("mean_cosine", 90) is None


def test_small_data_is_warned_about_and_reported():
    model = _mlp()
    x, y = decided_rows(model, 60)  # 18 calibration rows, 42 held out
    warnings = _Warnings()
    # The model's own classes are imbalanced on these rows (balanced accuracy would be the
    # default); the resolution of a counted metric is what is tested here.
    report = presso.compress(
        model, FP16, data=(x, y), bench=QUICK, progress=warnings, metric="accuracy"
    ).report
    assert report.budget.passed and report.budget.drop <= 0.01
    assert report.budget.one_row_drop == {"held-out": round(1 / 42, 6), "calibration": round(1 / 18, 6)}
    assert [w.split(",")[0] for w in warnings.lines] == ["with 18 calibration rows", "with 42 held-out rows"]
    assert [n for n in report.notes if n.startswith("budget resolution: ")] == [
        f"budget resolution: {w}" for w in warnings.lines
    ]
    enough = presso.compress(
        model, FP16, data=decided_rows(model, 400), bench=QUICK, metric="accuracy"
    ).report
    assert enough.budget.one_row_drop == {"held-out": round(1 / 280, 6), "calibration": round(1 / 120, 6)}
    assert not [n for n in enough.notes if n.startswith("budget resolution")]


@pytest.mark.int8_kernel
def test_refusal_on_too_few_rows_names_the_resolution_as_the_reason():
    model = _single_layer()
    x, y = _data(model)
    expected = (
        r"No int8 variant keeps the accuracy drop within --max-drop 0\.01 on data too small to "
        r"resolve it: with 18 calibration rows, one changed prediction drops accuracy by 0\.0556: .* "
        r"\(give at least 100 calibration rows, or --max-drop 0\.0556 or more\); "
        r"with 42 held-out rows, "
        r".*Variants tried: static-s8s8: accuracy drop"
    )
    with pytest.raises(presso.BudgetError, match=expected):
        presso.compress(model, "int8", data=(x[:60], y[:60]), bench=QUICK, metric="accuracy")


def test_the_cli_warns_on_too_few_rows(tmp_path, mlp_project):
    x, y = decided_rows(mlp_project["model"], 60)
    np.savez(tmp_path / "small.npz", X=x, y=y)
    (tmp_path / "fp16.yaml").write_text(
        "name: fp16\nstages:\n  - technique: weight-only\n    options: {scheme: float16}\n"
    )
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--weights",
        str(mlp_project["weights"]),
        "--data",
        str(tmp_path / "small.npz"),
        "--recipe",
        str(tmp_path / "fp16.yaml"),
        "--out",
        str(tmp_path / "art"),
        "--rounds",
        "1",
        "--batch",
        "8",
        "--metric",
        "accuracy",  # these rows' classes are imbalanced: the default would be balanced accuracy
    )
    assert done.returncode == 0, done.stderr
    assert "warning: with 18 calibration rows, one changed prediction drops accuracy by 0.0556" in done.stderr
    assert "warning: with 42 held-out rows, one changed prediction drops accuracy by 0.0238" in done.stderr
