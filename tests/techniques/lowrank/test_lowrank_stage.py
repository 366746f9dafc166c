"""The factorize stage and the lowrank recipe end to end through presso.compress."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import presso
from presso.errors import BudgetError, PressoError
from presso.measure import BenchSettings
from presso.recipe import measure as recipe_measure
from presso.recipe.schema import Recipe, Stage
from presso.techniques.lowrank import speed
from presso.techniques.lowrank.config import FactorizeConfig
from presso.techniques.lowrank.factorize import factorizable
from presso.techniques.lowrank.stage import target_layers

QUICK = BenchSettings(rounds=1, throughput_batch=8)
FAST = {"epochs": 3, "augment": 0}


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    """No peak-memory processes (no test here reads them); one torch thread for tiny models."""
    monkeypatch.setattr(recipe_measure, "peak_memory_mb", lambda *args, **kwargs: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compress(model, stages: list[tuple[str, dict]], data, **kwargs):
    recipe = Recipe(name="t", stages=[Stage(technique=t, options=o) for t, o in stages])
    return presso.compress(
        model, recipe, data=data, task=kwargs.pop("task", "classification"), bench=QUICK, **kwargs
    )


@pytest.fixture(scope="module")
def tabular():
    return presso.load_example("tabular")


def _rows(report, technique="factorize"):
    return next(s for s in report.stages if s.technique == technique).layers


def test_lowrank_recipe_on_tabular_is_within_budget_smaller_and_reproducible(tabular):
    report = presso.compress(
        tabular.model, "lowrank", data=tabular.data, task=tabular.task, bench=QUICK
    ).report
    assert report.budget.passed and report.budget.drop <= 0.01
    assert report.compressed.parameters < 0.5 * report.baseline.parameters
    rows = _rows(report)
    done = [r for r in rows if r["factorized"]]
    assert [r["layer"] for r in done] == ["net.0", "net.2"] and all(r["method"] == "svd" for r in done)
    assert all(0 < r["relative_error"] < 1 and r["frobenius_error"] > 0 for r in done)
    notes = " ".join(report.notes)
    assert "output layer net.4 kept whole" in notes and "fine-tuned to the original model's outputs" in notes
    pinned = report.recipe["stages"][0]["options"]
    assert pinned["ranks"] == {r["layer"]: int(r["rank"]) for r in done} and pinned["layers"] == [
        "net.0",
        "net.2",
    ]
    again = presso.compress(
        tabular.model, Recipe.model_validate(report.recipe), data=tabular.data, bench=QUICK
    ).report
    assert again.compressed.parameters == report.compressed.parameters
    assert again.compressed.metrics == report.compressed.metrics  # seeded: the same fine-tuning


def test_lowrank_on_digits_uses_tucker_for_the_convolutions():
    ex = presso.load_example("digits")
    report = presso.compress(ex.model, "lowrank", data=ex.data, task=ex.task, bench=QUICK).report
    assert report.budget.passed and report.budget.drop <= 0.01
    assert report.compressed.parameters < 0.4 * report.baseline.parameters
    methods = {r["layer"]: r["method"] for r in _rows(report) if r["factorized"]}
    assert methods == {"features.0": "tucker2", "features.2": "tucker2", "classifier.1": "svd"}


def test_a_broken_budget_retries_keeping_more_parameters_then_refuses(tabular):
    with pytest.raises(BudgetError) as err:
        _compress(tabular.model, [("factorize", {"epochs": 0})], tabular.data, max_drop=0.0)
    message = str(err.value)
    for keep in ("25%", "50%", "75%"):
        assert f"keep {keep} of each layer's parameters" in message


def test_fixed_rank_energy_and_error_selectors_run_as_stages(tabular):
    fixed = _compress(tabular.model, [("factorize", {**FAST, "rank": 4})], tabular.data, max_drop=1.0).report
    assert {r["layer"]: r["rank"] for r in _rows(fixed)} == {"net.0": "4", "net.2": "4"}
    whole = _compress(
        tabular.model,
        [("factorize", {**FAST, "rank": 2, "layers": ["net.4", "net.2"]})],
        tabular.data,
        max_drop=1.0,
    ).report
    rows = {r["layer"]: r for r in _rows(whole)}
    assert not rows["net.4"]["factorized"] and "rank 2 saves nothing" in rows["net.4"]["reason"]
    assert rows["net.2"]["factorized"]
    energy = _compress(
        tabular.model, [("factorize", {**FAST, "energy": 0.5})], tabular.data, max_drop=1.0
    ).report
    assert any(r["factorized"] for r in _rows(energy))
    error = _compress(
        tabular.model, [("factorize", {**FAST, "max_error": 0.5})], tabular.data, max_drop=1.0
    ).report
    assert all(r["relative_error"] <= 0.5 for r in _rows(error) if "relative_error" in r)


@pytest.mark.int8_kernel
def test_lowrank_composes_with_int8_and_with_pruning(tabular):
    alone = _compress(tabular.model, [("factorize", FAST)], tabular.data, max_drop=1.0).report
    q = _compress(tabular.model, [("factorize", FAST), ("int8", {})], tabular.data, max_drop=1.0).report
    assert [s.technique for s in q.stages] == ["factorize", "int8"]
    assert q.compressed.parameters == alone.compressed.parameters
    assert q.compressed.size_bytes < alone.compressed.size_bytes < 0.4 * q.baseline.size_bytes
    # each factor is its own int8 MatMul / Gemm: 2 factors x 2 layers + the output layer
    assert sum(r.get("precision") == "int8" for r in _rows(q, "int8")) == 5
    p = _compress(
        tabular.model, [("factorize", FAST), ("prune", {**FAST, "sparsity": 0.5})], tabular.data, max_drop=1.0
    ).report
    pruned = {r["layer"] for r in _rows(p, "prune")}
    assert {"net.0.0", "net.0.1", "net.2.0", "net.2.1"} <= pruned  # the factors are pruned too


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rank": 0}, r"stage 1 'factorize'.*rank must be >= 1"),
        ({"energy": -0.1}, r"stage 1 'factorize': option 'energy'"),
        ({"rank": 4, "energy": 0.9}, r"give one rank selector, not energy and rank"),
        ({"ranks": {"net.0": [0]}}, r"ranks\['net.0'\] must be a rank >= 1"),
        (
            {"layers": ["net.9"]},
            r"no Linear / Conv layer named 'net.9'; the model's are: net.0, net.2, net.4",
        ),
        ({"rank": 99, "layers": ["net.2"]}, r"rank 99 is larger than min\(m, n\) = 64 for net.2"),
        ({"rnak": 4}, r"stage 1 'factorize': unknown option 'rnak'"),
    ],
)
def test_bad_factorize_options_are_refused(tabular, options, match):
    with pytest.raises(PressoError, match=match):
        _compress(tabular.model, [("factorize", {**FAST, **options})], tabular.data)


@pytest.mark.int8_kernel
def test_factorize_needs_a_pytorch_model(tmp_path, tabular):
    path = tmp_path / "m.onnx"
    presso.compress(tabular.model, "int8", data=tabular.data, bench=QUICK).save(tmp_path / "q")
    path.write_bytes((tmp_path / "q" / "model.onnx").read_bytes())
    with pytest.raises(PressoError, match="stage 1 'factorize' trains the PyTorch model"):
        _compress(str(path), [("factorize", FAST)], tabular.data)


def test_speed_rank_takes_the_largest_measured_faster_rank(tabular, monkeypatch):
    # The timing itself is benchmarks/lowrank_suite.py's job; here a fake clock says ranks
    # keeping at most 45% of a layer's parameters run faster, so that is what is picked.
    def fake(layer, shape, candidates, workdir):
        return {k: float(k.split("-")[1]) <= 0.45 for k in candidates}

    monkeypatch.setattr(speed, "faster_at", fake)
    report = _compress(
        tabular.model, [("factorize", {**FAST, "rank": "speed"})], tabular.data, max_drop=1.0
    ).report
    rows = {r["layer"]: r for r in _rows(report)}
    assert rows["net.2"]["rank"] == str(int(0.45 * 64 * 64 / 128))  # 14: 45% of 64x64's parameters
    assert report.recipe["stages"][0]["options"]["ranks"]["net.2"] == 14

    monkeypatch.setattr(
        speed, "faster_at", lambda layer, shape, candidates, workdir: dict.fromkeys(candidates, False)
    )
    with pytest.raises(PressoError, match="no rank measured faster than the dense layer"):
        _compress(tabular.model, [("factorize", {**FAST, "rank": "speed"})], tabular.data, max_drop=1.0)
    with pytest.raises(PressoError, match=r"did not run measurably faster \(pays: speed\)"):
        _compress(tabular.model, [("factorize", {**FAST, "pays": "speed"})], tabular.data, max_drop=1.0)


def test_transformers_factorize_their_feed_forward_layers_by_default():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, vocab_size=50
        )
    ).eval()
    ctx = SimpleNamespace(transformer={"heads": 4, "hidden": 32})
    names, why = target_layers(bert, FactorizeConfig(), ctx, [])
    assert names == [f"encoder.layer.{i}.{n}.dense" for i in range(2) for n in ("intermediate", "output")]
    assert "attention projections" in why
    everything, _ = target_layers(bert, FactorizeConfig(layers="all"), ctx, [])
    assert everything == factorizable(bert)


def test_non_transformers_keep_the_last_layer_run_whole():
    class Reordered(nn.Module):  # registration order is not run order
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    names, why = target_layers(
        Reordered(), FactorizeConfig(), SimpleNamespace(transformer=None), ["body", "head"]
    )
    assert names == ["body"] and "output layer head kept whole" in why


def test_speed_probe_times_real_exports_of_the_layer_and_its_factors(tmp_path):
    # Which probe wins depends on the machine; that the dense layer and each probe are
    # exported, run on ONNX Runtime and compared is what this checks.
    layer = nn.Linear(256, 192)
    keep = speed.speed_keep(layer, (1, 256), tmp_path)
    assert keep is None or keep in speed._PROBES
    assert (tmp_path / "dense.onnx").is_file() and len(list(tmp_path.glob("keep-*.onnx"))) == len(
        speed._PROBES
    )


def test_layer_input_shapes_are_taken_at_batch_1_in_run_order():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    shapes = speed.input_shapes(model, ["2", "0"], (torch.zeros(4, 6),))
    assert list(shapes.items()) == [("0", (1, 6)), ("2", (1, 16))]


def test_activation_weighted_factors_fit_the_layer_inputs_better_than_plain_svd():
    # On inputs confined to a few directions, factors weighted by the input covariance
    # reproduce the layer's outputs far better than plain SVD at the same rank.
    from presso.techniques.lowrank.factorize import Selector, factorize_linear

    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    x = torch.randn(500, 8) @ torch.randn(8, 64)  # rank-8 inputs
    gram = (x.double().T @ x.double()).numpy() / len(x)
    plain, _ = factorize_linear(layer, "l", Selector(rank=8))
    weighted, d = factorize_linear(layer, "l", Selector(rank=8), gram=gram)
    with torch.no_grad():
        ref = layer(x)
        err_plain = (plain(x) - ref).norm() / ref.norm()
        err_weighted = (weighted(x) - ref).norm() / ref.norm()
    assert err_weighted < 0.5 * err_plain
    w = layer.weight.detach().double()
    w_r = (weighted[1].weight.detach() @ weighted[0].weight.detach()).double()
    assert abs(d.error - float((w - w_r).norm())) < 1e-3 * float(w.norm())  # measured ||W - W_r||
