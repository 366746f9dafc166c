"""Per-layer pruning sensitivity curves, ratios under a quality budget, and greedy allocation."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.techniques.pruning.masks import apply_masks, unstructured_masks
from presso.techniques.pruning.sensitivity import (
    LEVELS,
    allocate,
    curves_table,
    ratios_under_budget,
    sensitivity_curves,
)


def _mse_drop(model: nn.Module, x: torch.Tensor):
    """evaluate(m) = MSE of m's outputs against the model's outputs now (before pruning)."""
    with torch.no_grad():
        ref = model(x)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float(((m(x) - ref) ** 2).mean())

    return evaluate


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    """Layer "0": a few large weights among many tiny ones (insensitive); "2": equal magnitudes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        big = torch.rand(32, 16) < 0.05  # about 5% of the first layer carries the signal
        model[0].weight.mul_(torch.where(big, 20.0, 0.1))
        model[2].weight.copy_(torch.sign(torch.randn(4, 32)) * 0.2)  # every weight matters the same
    return model, torch.randn(64, 16)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# ---- curves -------------------------------------------------------------------------------


def test_sensitive_layer_curve_lies_above_insensitive_one():
    model, x = _mlp()
    curves = sensitivity_curves(model, ["0", "2"], _mse_drop(model, x))
    assert [lv for lv, _ in curves["0"]] == list(LEVELS) == [lv for lv, _ in curves["2"]]
    for (level, robust), (_, fragile) in zip(curves["0"], curves["2"], strict=True):
        assert fragile > robust, level
    robust_at = dict(curves["0"])
    fragile_at = dict(curves["2"])
    assert robust_at[0.9] < 0.1 * fragile_at[0.5]  # pruning 90% of layer 0 hurts less than 50% of layer 2


@pytest.mark.parametrize("kind", ["unstructured", "channels"])
def test_weights_restored_bit_for_bit(kind):
    model, x = _mlp()
    before = _state(model)
    seen = []

    def evaluate(m: nn.Module) -> float:
        seen.append((int((m[0].weight == 0).sum()), int((m[2].weight == 0).sum())))
        return _mse_drop(model, x)(m)

    sensitivity_curves(model, ["2", "0"], evaluate, levels=(0.5, 0.9), kind=kind)
    _assert_same(before, model)
    per_row = 1 if kind == "unstructured" else 32  # (4, 32): channels zero whole rows
    expected_zeros = [round(0.5 * 128 / per_row) * per_row, round(0.9 * 128 / per_row) * per_row]
    assert [z2 for _, z2 in seen[:2]] == expected_zeros and [z0 for z0, _ in seen[:2]] == [0, 0]  # only "2"


def test_weights_restored_when_evaluate_raises():
    model, x = _mlp()
    before = _state(model)
    calls = []

    def evaluate(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("evaluation crashed")
        return 0.0

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        sensitivity_curves(model, ["0", "2"], evaluate, kind="channels")
    _assert_same(before, model)


def test_mse_curve_of_one_linear_layer_with_orthonormal_inputs_is_monotone_and_exact():
    # With inputs = the identity, MSE against the original = sum of the pruned w^2 / (n_in * n_out):
    # magnitude pruning removes nested sets, so the curve never decreases.
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.eye(16)
    w = layer.weight.detach().clone()
    curves = sensitivity_curves(layer, [""], _mse_drop(layer, x))  # "" names the module itself
    drops = [d for _, d in curves[""]]
    assert all(a < b for a, b in pairwise(drops))
    for level, drop in curves[""]:
        pruned = torch.sort(w.abs().reshape(-1)).values[: round(level * w.numel())]
        assert_allclose(drop, float((pruned**2).sum()) / w.numel(), rtol=1e-5)


def test_mse_curve_is_not_monotone_with_correlated_inputs():
    # w = (0.6, -1), x1 = x2: pruning 0.6 alone leaves error 0.36 x^2, pruning both only 0.16 x^2.
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.6, -1.0]]))
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]])  # mean x^2 = 2
    curves = sensitivity_curves(layer, [""], _mse_drop(layer, x), levels=(0.5, 0.99))
    assert_allclose([d for _, d in curves[""]], [0.36 * 2, 0.16 * 2], rtol=1e-5)


def test_channels_zero_whole_rows_and_their_bias():
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor([[3.0, 0.0, 0.0], [0.1, 0.1, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.5]])
        )
        layer.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    seen = []
    sensitivity_curves(
        layer,
        [""],
        lambda m: seen.append((m.weight.clone(), m.bias.clone())) or 0.0,
        levels=(0.5,),
        kind="channels",
    )
    weight, bias = seen[0]
    assert torch.equal(
        weight, torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    )
    assert torch.equal(bias, torch.tensor([1.0, 0.0, 3.0, 0.0]))  # rows 1 and 3 (norms 0.14, 0.5) gone


def test_channels_zero_conv_filters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([1.0, 0.01, 5.0, 0.1]).view(4, 1, 1, 1))
    seen = []
    sensitivity_curves(
        model, ["0"], lambda m: seen.append(m[0].weight.clone()) or 0.0, levels=(0.5,), kind="channels"
    )
    zero_filters = [c for c in range(4) if torch.equal(seen[0][c], torch.zeros(2, 3, 3))]
    assert zero_filters == [1, 3]


def test_masked_layer_is_pruned_through_weight_orig():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    apply_masks(model, unstructured_masks({"0.weight": model[0].weight}, 0.5))
    before = _state(model)  # weight_orig keeps its (nonzero) masked entries
    x = torch.randn(16, 8)
    curves = sensitivity_curves(model, ["0"], _mse_drop(model, x), levels=(0.3, 0.5, 0.7))
    drop = dict(curves["0"])
    assert drop[0.3] == 0.0 and drop[0.5] == 0.0 and drop[0.7] > 0  # already 50% sparse
    _assert_same(before, model)
    assert torch.equal(model[0].weight, model[0].weight_orig * model[0].weight_mask)  # not left stale


def test_progress_reports_every_evaluation():
    model, x = _mlp()
    lines = []
    sensitivity_curves(model, ["0", "2"], _mse_drop(model, x), levels=(0.5, 0.9), progress=lines.append)
    assert len(lines) == 4 and lines[0].startswith("sensitivity 0 @ 0.5 (unstructured): drop ")


@pytest.mark.parametrize("levels", [(), (0.5, 0.3), (0.5, 0.5), (0.0, 0.5), (0.5, 1.0), (True,), ("0.5",)])
def test_bad_levels_refused(levels):
    model, x = _mlp()
    msg = r"'levels' of sensitivity_curves\(\) must be sparsities in \(0, 1\)"
    with pytest.raises(PressoError, match=msg):
        sensitivity_curves(model, ["0"], _mse_drop(model, x), levels=levels)


def test_bad_kind_layers_and_evaluate_refused():
    model, x = _mlp()
    evaluate = _mse_drop(model, x)
    with pytest.raises(PressoError, match=r"'kind' option .* \['unstructured', 'channels'\]. Got 'rows'"):
        sensitivity_curves(model, ["0"], evaluate, kind="rows")
    with pytest.raises(PressoError, match=r"No Linear or Conv layer named 'fc9'.*choose from \['0', '2'\]"):
        sensitivity_curves(model, ["fc9"], evaluate)
    with pytest.raises(PressoError, match=r"No Linear or Conv layer named '1'"):  # the ReLU
        sensitivity_curves(model, ["1"], evaluate)
    with pytest.raises(PressoError, match="must be a list of layer names"):
        sensitivity_curves(model, "0", evaluate)
    with pytest.raises(PressoError, match="distinct layer names"):
        sensitivity_curves(model, ["0", "0"], evaluate)
    before = _state(model)
    with pytest.raises(PressoError, match=r"'evaluate' function must return the quality drop as a float"):
        sensitivity_curves(model, ["0"], lambda m: "bad")
    _assert_same(before, model)


# ---- policy -------------------------------------------------------------------------------


def test_ratios_under_budget_on_hand_example():
    curves = {
        "a": [(0.5, 0.001), (0.7, 0.004), (0.9, 0.02)],
        "b": [(0.5, 0.03), (0.9, 0.05)],  # nothing passes: the floor
        "c": [(0.3, 0.0), (0.5, 0.02), (0.8, 0.005)],  # not monotone: the largest passing level
        "d": [(0.5, float("nan"))],  # NaN never passes
    }
    assert ratios_under_budget(curves, max_drop=0.005) == {"a": 0.7, "b": 0.0, "c": 0.8, "d": 0.0}
    assert ratios_under_budget(curves, max_drop=0.005, floor=0.2)["b"] == 0.2
    assert ratios_under_budget(curves, max_drop=1.0) == {"a": 0.9, "b": 0.9, "c": 0.8, "d": 0.0}


def test_allocate_reaches_the_target_greedily():
    curves = {"a": [(0.5, 0.0), (0.7, 0.01), (0.9, 0.05)], "b": [(0.5, 0.0), (0.7, 0.02), (0.9, 0.03)]}
    sizes = {"a": 100, "b": 300, "unused": 7}
    # start a = b = 0.5 (mean 0.5); cost per pruned weight: a 0.5->0.7 0.01/20 = 5e-4, b 0.5->0.7
    # 0.02/60 = 3.3e-4 -> b = 0.7 (mean 0.65); then b 0.7->0.9 0.01/60 = 1.7e-4 < 5e-4 -> b = 0.9 (mean 0.8)
    assert allocate(curves, sizes, target=0.75, max_drop=0.005) == {"a": 0.5, "b": 0.9}
    assert allocate(curves, sizes, target=0.6, max_drop=0.005) == {"a": 0.5, "b": 0.7}
    # at or above the target from the start: unchanged
    assert allocate(curves, sizes, target=0.5, max_drop=0.005) == {"a": 0.5, "b": 0.5}
    assert allocate(curves, sizes, target=0.1, max_drop=0.02) == {"a": 0.7, "b": 0.7}
    # unreachable: every layer at its top level, the mean stays below the target
    assert allocate(curves, sizes, target=0.95, max_drop=0.005) == {"a": 0.9, "b": 0.9}


def test_allocate_starts_from_zero_and_breaks_ties_by_order():
    curves = {"a": [(0.5, 0.1), (0.9, 0.2)], "b": [(0.5, 0.1), (0.9, 0.2)]}
    sizes = {"a": 10, "b": 10}
    # nothing passes max_drop: both start at 0 (drop 0); equal costs -> the first layer moves first
    assert allocate(curves, sizes, target=0.25, max_drop=0.0) == {"a": 0.5, "b": 0.0}
    flipped = {"b": curves["b"], "a": curves["a"]}
    assert allocate(flipped, sizes, target=0.25, max_drop=0.0) == {"b": 0.5, "a": 0.0}
    assert allocate(curves, sizes, target=0.5, max_drop=0.0) == {"a": 0.5, "b": 0.5}
    results = {tuple(allocate(curves, sizes, target=0.6, max_drop=0.0).items()) for _ in range(3)}
    assert results == {(("a", 0.9), ("b", 0.5))}  # deterministic


def test_curves_table_rows():
    curves = {"fc1": [(0.5, 0.00123456789), (0.95, 0.25)], "fc2": [(0.5, 1e-9), (0.95, 2.0)]}
    assert curves_table(curves) == [
        {"layer": "fc1", "drop@0.5": 0.001235, "drop@0.95": 0.25},
        {"layer": "fc2", "drop@0.5": 0.0, "drop@0.95": 2.0},
    ]


def test_policy_inputs_refused():
    curves = {"a": [(0.5, 0.0), (0.9, 0.1)]}
    with pytest.raises(PressoError, match="non-empty dict"):
        ratios_under_budget({}, max_drop=0.01)
    with pytest.raises(PressoError, match=r"curve of layer 'a' must be a list of \(level, drop\) pairs"):
        ratios_under_budget({"a": [0.5, 0.9]}, max_drop=0.01)
    with pytest.raises(PressoError, match=r"'levels' of the curve of layer 'a' .* strictly increasing"):
        curves_table({"a": [(0.9, 0.0), (0.5, 0.1)]})
    with pytest.raises(PressoError, match="'max_drop' option must be a finite number. Got nan"):
        ratios_under_budget(curves, max_drop=float("nan"))
    with pytest.raises(PressoError, match=r"'floor' option must be a number in \[0, 1\)"):
        ratios_under_budget(curves, max_drop=0.01, floor=1.0)
    with pytest.raises(PressoError, match=r"'target' option must be a number in \[0, 1\)"):
        allocate(curves, {"a": 10}, target=1.5, max_drop=0.01)
    with pytest.raises(PressoError, match=r"'sizes' option must give a positive int .* layer 'a'.*Got None"):
        allocate(curves, {"b": 10}, target=0.5, max_drop=0.01)
    with pytest.raises(PressoError, match=r"'sizes' option .* Got 0 instead"):
        allocate(curves, {"a": 0}, target=0.5, max_drop=0.01)
