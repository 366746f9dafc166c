"""Pruning criteria, masks (unstructured, N:M), schedules, and masks applied to modules."""

from __future__ import annotations

import itertools

import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.techniques.pruning.criteria import (
    activation_importance,
    l1_norm,
    l2_norm,
    magnitude,
    random_scores,
    taylor,
    taylor_channel,
)
from presso.techniques.pruning.masks import (
    apply_masks,
    iterative_sparsity,
    make_permanent,
    nm_mask,
    polynomial_sparsity,
    prunable_weights,
    sparsity_of,
    unstructured_masks,
)

# ---- criteria ---------------------------------------------------------------------------


def test_weight_criteria_on_hand_example():
    w = torch.tensor([[2.0, -1.0], [0.5, -4.0]])
    g = torch.tensor([[0.5, 3.0], [-2.0, 0.25]])
    assert_allclose(magnitude(w).numpy(), [[2.0, 1.0], [0.5, 4.0]])
    assert_allclose(taylor(w, g).numpy(), [[1.0, 3.0], [1.0, 1.0]])  # |w * g|
    assert_allclose(taylor(w, g).numpy(), (w * g).abs().numpy(), rtol=0, atol=0)
    r1, r2 = random_scores(w, seed=3), random_scores(w, seed=3)
    assert torch.equal(r1, r2) and r1.shape == w.shape and not torch.equal(r1, random_scores(w, seed=4))


def test_channel_criteria_on_hand_example():
    w = torch.tensor([[3.0, -4.0], [1.0, 0.0]])
    g = torch.tensor([[1.0, 1.0], [2.0, 5.0]])
    assert_allclose(l1_norm(w).numpy(), [7.0, 1.0])
    assert_allclose(l2_norm(w).numpy(), [5.0, 1.0])
    assert_allclose(taylor_channel(w, g).numpy(), [1.0, 2.0])  # |3 - 4|, |2 + 0|
    conv = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) - 10  # (out, in, kh, kw)
    assert_allclose(l1_norm(conv).numpy(), conv.abs().reshape(2, -1).sum(1).numpy())


def test_activation_importance_on_hand_example():
    acts = torch.tensor([[1.0, -2.0, 0.0], [-3.0, 2.0, 6.0]])  # (N=2, C=3)
    assert_allclose(activation_importance(acts).numpy(), [2.0, 2.0, 3.0])
    conv = torch.zeros(2, 2, 2, 2)  # (N, C, H, W)
    conv[:, 1] = -1.0
    conv[0, 0, 0, 0] = 8.0
    assert_allclose(activation_importance(conv).numpy(), [1.0, 1.0])  # 8 / 8 positions, all |-1|
    tokens = torch.tensor([[[1.0, -4.0], [3.0, 0.0]]])  # (N=1, T=2, C=2), channels last
    assert_allclose(activation_importance(tokens, axis=-1).numpy(), [2.0, 2.0])


def test_criteria_refuse_mismatched_gradient():
    with pytest.raises(PressoError, match="gradient given to 'taylor' has shape"):
        taylor(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(PressoError, match="at least 2 dimensions"):
        l1_norm(torch.ones(3))


# ---- unstructured masks -----------------------------------------------------------------


def _weights():
    gen = torch.Generator().manual_seed(0)
    return {
        "big": torch.randn(40, 30, generator=gen) * 3.0,  # 1200 weights, larger
        "small": torch.randn(20, 10, generator=gen) * 0.1,
    }  # 200 weights, tiny


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_global_scope_zeroes_exactly_round_of_total(sparsity):
    w = _weights()
    masks = unstructured_masks(w, sparsity, scope="global")
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros == round(sparsity * 1400)
    # Global ranking: every kept |w| is >= every pruned |w|.
    kept = torch.cat([w[n][m].abs() for n, m in masks.items()])
    pruned = torch.cat([w[n][~m].abs() for n, m in masks.items()])
    if len(kept) and len(pruned):
        assert kept.min() >= pruned.max()


def test_global_and_layer_scope_differ_as_expected():
    w = _weights()
    glob = unstructured_masks(w, 0.5, scope="global")
    layer = unstructured_masks(w, 0.5, scope="layer")
    assert int((~layer["big"]).sum()) == 600 and int((~layer["small"]).sum()) == 100
    # The tiny layer goes almost entirely under global ranking; 700 zeros in all.
    assert int((~glob["small"]).sum()) == 200 and int((~glob["big"]).sum()) == 500


def test_ties_are_broken_by_position():
    w = {"a": torch.ones(2, 3), "b": torch.ones(5)}
    masks = unstructured_masks(w, 0.5, scope="global")  # 11 equal weights, 6 zeros (round(5.5) = 6)
    assert masks["a"].reshape(-1).tolist() == [False] * 6
    assert masks["b"].tolist() == [True] * 5
    assert torch.equal(masks["a"], unstructured_masks(w, 0.5, scope="global")["a"])


def test_custom_scores_choose_what_is_kept():
    w = {"a": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    g = {"a": torch.tensor([0.0, 1.0, 0.0, 10.0])}
    masks = unstructured_masks(w, 0.5, scores={"a": taylor(w["a"], g["a"])})
    assert masks["a"].tolist() == [False, True, False, True]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_sparsity_is_refused(bad):
    with pytest.raises(PressoError, match=r"'sparsity' option must be a number in \[0, 1\)"):
        unstructured_masks(_weights(), bad)


def test_bad_scope_and_scores_are_refused():
    with pytest.raises(PressoError, match="'scope' option must be one of"):
        unstructured_masks(_weights(), 0.5, scope="model")
    with pytest.raises(PressoError, match="scores for weight 'small' must have its shape"):
        unstructured_masks(_weights(), 0.5, scores={"big": torch.ones(40, 30)})


# ---- N:M --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_mask_keeps_exactly_n_largest_per_group(n, m):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(w, n, m)
    groups = mask.reshape(16, 32 // m, m)
    assert (groups.sum(-1) == n).all()
    a = w.abs().reshape(16, 32 // m, m)
    kept_min = torch.where(groups, a, torch.inf).min(-1).values
    pruned_max = torch.where(groups, -torch.inf, a).max(-1).values
    assert (kept_min >= pruned_max).all()


def test_nm_mask_hand_example_and_conv():
    w = torch.tensor([[4.0, -1.0, 0.5, -3.0, 0.0, 0.1, -0.2, 0.0]])
    assert nm_mask(w).int().tolist() == [[1, 0, 0, 1, 0, 1, 1, 0]]
    conv = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(2))  # K = 36
    mask = nm_mask(conv)
    assert mask.shape == conv.shape and (mask.reshape(8, 9, 4).sum(-1) == 2).all()


def test_nm_mask_refusals():
    with pytest.raises(PressoError, match=r"Layer 'fc1' has 30 inputs per output .* not a multiple of m=4"):
        nm_mask(torch.ones(5, 30), name="fc1")
    with pytest.raises(PressoError, match="n must be <= m"):
        nm_mask(torch.ones(4, 8), n=5, m=4)
    with pytest.raises(PressoError, match="'n' option of N:M sparsity must be a positive int"):
        nm_mask(torch.ones(4, 8), n=0)


# ---- schedules --------------------------------------------------------------------------


def test_polynomial_schedule_endpoints_shape_and_monotonicity():
    assert polynomial_sparsity(0, 100, 0.9) == 0.0
    assert polynomial_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert polynomial_sparsity(250, 100, 0.9) == pytest.approx(0.9)  # constant after the end
    assert polynomial_sparsity(50, 100, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.5**3)
    values = [polynomial_sparsity(t, 100, 0.9) for t in range(101)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert steps[0] > steps[-1]  # cubic: prunes fast early, slowly near the end


def test_iterative_schedule_removes_same_fraction_each_round():
    final, rounds = 0.9, 4
    s = [iterative_sparsity(r, rounds, final) for r in range(rounds + 1)]
    assert s[0] == 0.0 and s[-1] == pytest.approx(final)
    survive = [(1 - b) / (1 - a) for a, b in itertools.pairwise(s)]
    assert_allclose(survive, [(1 - final) ** (1 / rounds)] * rounds, rtol=1e-12)


def test_schedule_refusals():
    with pytest.raises(PressoError, match="'final' option must be a number"):
        polynomial_sparsity(1, 10, 1.0)
    with pytest.raises(PressoError, match="'total_steps' option must be a positive int"):
        polynomial_sparsity(1, 0, 0.5)
    with pytest.raises(PressoError, match="must not exceed"):
        polynomial_sparsity(1, 10, 0.5, initial=0.6)
    with pytest.raises(PressoError, match="'rounds' option must be a positive int"):
        iterative_sparsity(1, 0, 0.5)


# ---- applying masks ---------------------------------------------------------------------


def test_apply_masks_keeps_zeros_through_training_and_make_permanent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Conv1d(2, 2, 2))  # 128 + 8 weights
    weights = prunable_weights(model)
    assert list(weights) == ["0.weight", "2.weight"]
    masks = unstructured_masks(weights, 0.75, scope="layer")
    apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model[0](torch.randn(4, 8)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(model[0].weight == 0, ~masks["0.weight"])
    make_permanent(model)
    assert sorted(n for n, _ in model.named_parameters()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert sparsity_of(prunable_weights(model)) == pytest.approx(0.75, abs=1e-9)
    assert not any(len(m._forward_pre_hooks) for m in model.modules())


def test_apply_masks_refuses_unknown_names_and_shapes():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(PressoError, match="No parameter 'fc.weight'"):
        apply_masks(model, {"fc.weight": torch.ones(4, 4, dtype=torch.bool)})
    with pytest.raises(PressoError, match="mask for '0.weight' has shape"):
        apply_masks(model, {"0.weight": torch.ones(2, 4, dtype=torch.bool)})
