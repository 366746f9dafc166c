"""Sparsity-inducing penalties (L1, group lasso over output channels) and the regularized loss."""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from presso.errors import PressoError
from presso.techniques.pruning.masks import apply_masks, unstructured_masks
from presso.train.regularizers import group_lasso_penalty, l1_penalty, regularized

# ---- values and gradients -----------------------------------------------------------------


def test_l1_penalty_on_hand_example():
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0]])  # sum |w| = 6
    b = torch.tensor([-4.0, 2.0])  # sum |w| = 6
    assert_allclose(l1_penalty([a, b]).item(), 12.0 / 6, rtol=1e-7)
    assert_allclose(l1_penalty([a]).item(), 6.0 / 4, rtol=1e-7)
    assert_allclose(l1_penalty(iter([a, b])).item(), 2.0, rtol=1e-7)  # any iterable


def test_group_lasso_penalty_on_hand_example():
    linear = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])  # (out=3, in=2): norms 5, 0, 1
    assert_allclose(group_lasso_penalty([linear]).item(), math.sqrt(2) * (5 + 0 + 1) / 6, rtol=1e-6)
    conv = torch.zeros(2, 2, 1, 2)  # (out, in, kh, kw): groups of p = 4
    conv[0] = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])  # norm 2
    conv[1, 1, 0, 0] = -3.0  # norm 3
    assert_allclose(group_lasso_penalty([conv]).item(), math.sqrt(4) * (2 + 3) / 8, rtol=1e-6)
    both = (math.sqrt(2) * 6 + math.sqrt(4) * 5) / (6 + 8)  # one N over all tensors
    assert_allclose(group_lasso_penalty([linear, conv]).item(), both, rtol=1e-6)


def test_l1_gradient_is_sign_over_count():
    torch.manual_seed(0)
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(3, 2, 2, 2, requires_grad=True)
    with torch.no_grad():
        a[0, 0] = 0.0  # sign(0) = 0: the subgradient autograd picks
    l1_penalty([a, b]).backward()
    n = a.numel() + b.numel()
    assert_allclose(a.grad.numpy(), (torch.sign(a.detach()) / n).numpy(), rtol=1e-6, atol=0)
    assert_allclose(b.grad.numpy(), (torch.sign(b.detach()) / n).numpy(), rtol=1e-6, atol=0)


def test_group_lasso_gradient_is_scaled_unit_direction():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 2, 2, requires_grad=True)  # conv: groups of p = 8
    with torch.no_grad():
        w[2] = 0.0  # an all-zero group has zero gradient, not NaN
    group_lasso_penalty([w]).backward()
    n, p = w.numel(), 8
    for c in range(2):
        g = w.detach()[c]
        assert_allclose(w.grad[c].numpy(), (math.sqrt(p) * g / g.norm() / n).numpy(), rtol=1e-5, atol=1e-8)
    assert torch.equal(w.grad[2], torch.zeros_like(w.grad[2]))


def test_group_lasso_refuses_vectors_and_empty_input():
    with pytest.raises(PressoError, match=r"at least 2 dimensions.*shape \(3,\)"):
        group_lasso_penalty([torch.ones(3)])
    with pytest.raises(PressoError, match="No weights given to 'l1_penalty'"):
        l1_penalty([])


# ---- regularized loss -----------------------------------------------------------------------


def test_regularized_adds_both_penalties():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    out = net(x)
    loss_fn = regularized(nn.MSELoss(), [net[0], net[2]], l1=0.5, group_lasso=2.0)
    ws = [net[0].weight, net[2].weight]
    expected = nn.functional.mse_loss(out, y) + 0.5 * l1_penalty(ws) + 2.0 * group_lasso_penalty(ws)
    assert_allclose(loss_fn(out, y).item(), expected.item(), rtol=1e-6)
    mse = nn.MSELoss()
    assert regularized(mse, [net[0]]) is mse  # both strengths 0: the loss itself
    assert regularized(mse, [], l1=0.0, group_lasso=0) is mse


@pytest.mark.parametrize("key", ["l1", "group_lasso"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_regularized_refuses_bad_strengths(key, bad):
    with pytest.raises(PressoError, match=rf"'{key}' option of regularized\(\) must be a finite number >= 0"):
        regularized(nn.MSELoss(), [nn.Linear(2, 2)], **{key: bad})


def test_regularized_refuses_missing_layers_and_weightless_modules():
    with pytest.raises(PressoError, match="no layers to penalise"):
        regularized(nn.MSELoss(), [], l1=0.1)
    with pytest.raises(PressoError, match=r"Layer 1 given to regularized\(\) \(ReLU\) has no weight"):
        regularized(nn.MSELoss(), [nn.Linear(2, 2), nn.ReLU()], l1=0.1)


def test_regularized_reads_the_current_masked_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    apply_masks(net, unstructured_masks({"0.weight": net[0].weight}, 0.5))
    mask = net[0].weight_mask.bool()
    loss_fn = regularized(nn.MSELoss(), [net[0]], l1=1.0, group_lasso=1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):  # a list captured before the first forward would be stale and its graph freed
        opt.zero_grad()
        out = net(x)
        current = net[0].weight_orig.detach() * mask  # what the forward just used
        expected = nn.functional.mse_loss(out, y) + l1_penalty([current]) + group_lasso_penalty([current])
        loss = loss_fn(out, y)
        assert_allclose(loss.item(), expected.item(), rtol=1e-6)
        loss.backward()
        assert torch.equal(net[0].weight_orig.grad[~mask], torch.zeros(int((~mask).sum())))  # masked: no pull
        opt.step()
    assert int((net[0].weight == 0).sum()) >= int((~mask).sum())  # masked weights stay 0


# ---- training ---------------------------------------------------------------------------------


def _train(l1: float = 0.0, group_lasso: float = 0.0, steps: int = 300) -> tuple[nn.Module, float]:
    """A 8-32-1 ReLU net fitted by Adam to y = x0 - 2 * x1; the penalties act on the first layer."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :2] @ torch.tensor([[1.0], [-2.0]])  # (256, 1): most inputs and neurons are unneeded
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    loss_fn = regularized(nn.MSELoss(), [net[0]], l1=l1, group_lasso=group_lasso)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        return net, nn.functional.mse_loss(net(x), y).item()


@pytest.fixture(scope="module")
def plain() -> tuple[nn.Module, float]:
    return _train()


def test_group_lasso_training_zeroes_whole_output_channels(plain):
    (plain, plain_mse), (lasso, lasso_mse) = plain, _train(group_lasso=1.0)
    plain_norms = plain[0].weight.detach().norm(dim=1)  # (32,)
    lasso_norms = lasso[0].weight.detach().norm(dim=1)
    assert int((plain_norms < 1e-2).sum()) == 0  # seeded run: 0 without, 9 of 32 with
    assert int((lasso_norms < 1e-2).sum()) >= 6
    assert float(lasso_norms.median()) < 0.5 * float(plain_norms.median())
    assert plain_mse < 0.01 and lasso_mse < 0.01  # the task is still fitted


def test_l1_training_yields_near_zero_weights(plain):
    (plain, plain_mse), (sparse, sparse_mse) = plain, _train(l1=0.3)
    near_zero = lambda net: int((net[0].weight.abs() < 1e-2).sum())  # noqa: E731
    assert near_zero(plain) <= 20  # seeded run: 9 of 256 without, 150 with
    assert near_zero(sparse) >= 100
    assert plain_mse < 0.01 and sparse_mse < 0.01
