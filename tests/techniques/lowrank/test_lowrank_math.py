"""Low-rank math: truncated SVD against numpy, Tucker-2, rank selectors, presso.factorize, bad ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from torch import nn

import presso
from presso.errors import PressoError
from presso.techniques.lowrank.factorize import Selector, factorize_conv, factorize_linear
from presso.techniques.lowrank.ranks import rank_from_spectrum, tail_error
from presso.techniques.lowrank.svd import svd_factors
from presso.techniques.lowrank.tucker import mode_spectra, tucker2, tucker_conv, tucker_ranks


def _trained_weights() -> dict[str, np.ndarray]:
    """Real weights: the digits example's trained CNN (Linear 512->64, Linear 64->10, convs)."""
    model = presso.load_example("digits").model
    return {
        n: p.detach().numpy().astype(np.float64) for n, p in model.named_parameters() if n.endswith("weight")
    }


@pytest.fixture(scope="module")
def trained():
    return _trained_weights()


# 1. Truncated SVD: error equals the discarded singular values (Eckart-Young), vs numpy


def _check_error_formula(w: np.ndarray) -> None:
    sigma_np = np.linalg.svd(w, compute_uv=False)
    for r in range(1, len(sigma_np) + 1):
        f = svd_factors(w, r)
        approx = f.second @ f.first
        direct = np.linalg.norm(w - approx)  # Frobenius
        formula = np.sqrt(np.sum(sigma_np[r:] ** 2))
        assert_allclose(f.error, formula, rtol=1e-9, atol=1e-9)
        assert_allclose(direct, formula, rtol=1e-7, atol=1e-9)
        assert_allclose(f.relative_error, formula / np.linalg.norm(w), rtol=1e-9, atol=1e-12)
        # and it is the best rank-r approximation: numpy's own truncated reconstruction
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        assert_allclose(approx, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-9)


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (33, 33)])
def test_svd_error_is_the_square_root_of_the_discarded_sigma_squared_random(shape):
    _check_error_formula(np.random.default_rng(sum(shape)).normal(size=shape))


def test_svd_error_is_the_square_root_of_the_discarded_sigma_squared_trained(trained):
    _check_error_formula(trained["classifier.1.weight"])  # (64, 512), trained
    _check_error_formula(trained["classifier.3.weight"])  # (10, 64)


def test_factorized_linear_computes_the_truncated_product_and_is_exact_at_full_rank():
    torch.manual_seed(0)
    layer = nn.Linear(48, 20)
    x = torch.randn(7, 48)
    w = layer.weight.detach().double().numpy()
    for r in (3, 11, 20):
        small = presso.factorize(layer, rank=r)
        f = svd_factors(w, r)
        expected = x.double().numpy() @ (f.second @ f.first).T + layer.bias.detach().double().numpy()
        assert_allclose(small(x).detach().numpy(), expected, atol=1e-5)
        assert small[0].weight.shape == (r, 48) and small[1].weight.shape == (20, r)
        assert_allclose(small.decision.error, tail_error(np.linalg.svd(w, compute_uv=False), r), rtol=1e-9)
    full = presso.factorize(layer, rank=20)
    assert_allclose(full(x).detach().numpy(), layer(x).detach().numpy(), atol=1e-5)
    # the first factor has orthonormal rows (the singular values live in the second)
    first = presso.factorize(layer, rank=8)[0].weight.detach().double().numpy()
    assert_allclose(first @ first.T, np.eye(8), atol=1e-6)


# 2. Rank selectors


def test_rank_selectors_pick_the_smallest_rank_meeting_them():
    sigma = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    power = sigma**2
    assert rank_from_spectrum(sigma, rank=4) == 4
    assert rank_from_spectrum(sigma, ratio=0.5) == 3
    assert rank_from_spectrum(sigma, ratio=1.0) == 6
    for energy in (0.5, 0.8, 0.95, 0.99, 0.9999, 1.0):
        r = rank_from_spectrum(sigma, energy=energy)
        assert power[:r].sum() / power.sum() >= energy - 1e-12
        assert r == 1 or power[: r - 1].sum() / power.sum() < energy
    for max_error in (0.0, 0.01, 0.1, 0.3, 0.6):
        r = rank_from_spectrum(sigma, max_error=max_error)
        rel = np.sqrt(power[r:].sum() / power.sum())
        assert rel <= max_error + 1e-12
        assert r == 1 or np.sqrt(power[r - 1 :].sum() / power.sum()) > max_error


def test_energy_and_error_selectors_on_a_trained_layer(trained):
    layer = nn.Linear(512, 64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(trained["classifier.1.weight"]))
    small = presso.factorize(layer, energy=0.9)
    sigma = np.linalg.svd(trained["classifier.1.weight"], compute_uv=False)
    r = small[0].out_features
    assert (sigma[:r] ** 2).sum() / (sigma**2).sum() >= 0.9 > (sigma[: r - 1] ** 2).sum() / (sigma**2).sum()
    assert presso.factorize(layer, max_error=0.2).decision.relative_error <= 0.2


# 3. Tucker-2 of convolutions


def _conv_reference(layer: nn.Conv2d, weight: np.ndarray, x: torch.Tensor) -> np.ndarray:
    return F.conv2d(
        x.double(),
        torch.from_numpy(weight),
        layer.bias.detach().double(),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
    ).numpy()


def _monotone(weight: np.ndarray) -> list[float]:
    o, i = weight.shape[:2]
    errors = [tucker2(weight, (r, r * i // o or 1)).error for r in range(1, o + 1)]
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:], strict=False)), errors
    return errors


def test_tucker2_error_decreases_monotonically_with_rank_random():
    w = np.random.default_rng(0).normal(size=(16, 8, 3, 3))
    errors = _monotone(w)
    assert errors[-1] < 1e-9 and errors[0] > 0.5 * np.linalg.norm(w)
    # and along each mode alone
    for fixed_out in (4, 16):
        col = [tucker2(w, (fixed_out, r)).error for r in range(1, 9)]
        assert all(b <= a + 1e-9 for a, b in zip(col, col[1:], strict=False))


def test_tucker2_error_decreases_monotonically_with_rank_trained(trained):
    errors = _monotone(trained["features.2.weight"])  # (32, 16, 3, 3), trained
    assert errors[-1] < 1e-9


def test_tucker2_conv_equals_the_conv_with_the_reconstructed_weight():
    torch.manual_seed(1)
    layer = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 8, 11, 11)
    for ranks in [(3, 2), (6, 5), (12, 8)]:
        factors = tucker2(layer.weight, ranks)
        small = presso.factorize(layer, rank=max(ranks)) if ranks == (12, 8) else None
        conv = tucker_conv(layer, factors)
        assert_allclose(conv(x).detach().numpy(), _conv_reference(layer, factors.reconstruct(), x), atol=1e-4)
        assert_allclose(
            factors.error,
            np.linalg.norm(layer.weight.detach().double().numpy() - factors.reconstruct()),
            rtol=1e-6,
        )
        if small is not None:  # full ranks: exactly the original layer
            assert_allclose(small(x).detach().numpy(), layer(x).detach().numpy(), atol=1e-4)
    one_d = nn.Conv1d(6, 10, 5, padding=2)
    f1 = presso.factorize(one_d, rank=4)
    assert isinstance(f1[1], nn.Conv1d) and f1[1].kernel_size == (5,)
    assert f1(torch.randn(1, 6, 20)).shape == (1, 10, 20)


def test_tucker_ranks_by_energy_per_mode_and_error_bound():
    w = np.random.default_rng(3).normal(size=(16, 12, 3, 3)) * np.linspace(3, 0.1, 16)[:, None, None, None]
    s_out, s_in = mode_spectra(w)
    r_out, r_in = tucker_ranks(w, energy=0.8)
    for s, r in ((s_out, r_out), (s_in, r_in)):
        assert (s[:r] ** 2).sum() / (s**2).sum() >= 0.8 > (s[: r - 1] ** 2).sum() / (s**2).sum()
    ranks = tucker_ranks(w, max_error=0.3)
    assert tucker2(w, ranks).relative_error <= 0.3  # HOSVD's bound, kept by the HOOI refinement


# 4. presso.factorize on a model, and what it refuses


def test_factorize_a_model_replaces_layers_that_pay_and_leaves_the_input_alone():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 36, 64),
        nn.ReLU(),
        nn.Linear(64, 4),
    )
    before = sum(p.numel() for p in model.parameters())
    small = presso.factorize(model, ratio=0.25)
    assert sum(p.numel() for p in model.parameters()) == before  # untouched
    assert sum(p.numel() for p in small.parameters()) < before
    assert small[3].decision.rank == "16" and small[5].decision.factorized
    x = torch.randn(2, 3, 6, 6)
    assert small(x).shape == (2, 4)
    only = presso.factorize(model, rank=8, layers=["3"])
    assert isinstance(only[0], nn.Conv2d) and only[3][0].out_features == 8
    with pytest.raises(PressoError, match=r"No layer named 'fc'.*Linear / Conv layers are: 0, 3, 5"):
        presso.factorize(model, rank=8, layers=["fc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, r"rank must be a whole number >= 1.*got 0"),
        ({"rank": -3}, r"rank must be a whole number >= 1.*got -3"),
        ({"rank": 21}, r"rank 21 is larger than min\(m, n\) = 20 for Linear; choose a rank between 1 and 20"),
        ({"energy": -0.1}, r"energy is the fraction of the spectral energy.*in \(0, 1\].*got -0.1"),
        ({"energy": 1.5}, r"energy .* in \(0, 1\].*got 1.5"),
        ({"ratio": 0.0}, r"ratio is the fraction of the full rank kept, in \(0, 1\]"),
        ({"max_error": 1.0}, r"max_error is the largest relative Frobenius error allowed, in \[0, 1\)"),
        ({"rank": 4, "energy": 0.9}, r"Give one of rank, ratio, energy or max_error.*got rank, energy"),
        ({}, r"Give a rank selector: rank, ratio, energy or max_error"),
    ],
)
def test_bad_ranks_get_clear_errors(kwargs, match):
    with pytest.raises(PressoError, match=match):
        presso.factorize(nn.Linear(48, 20), **kwargs)


def test_bad_conv_ranks_and_layers_get_clear_errors():
    with pytest.raises(PressoError, match=r"rank 40 is larger than both channel counts \(16 out, 8 in\)"):
        presso.factorize(nn.Conv2d(8, 16, 3), rank=40)
    with pytest.raises(
        PressoError, match=r"ranks \[20, 4\] exceed the channel counts of 'c' \(16 out, 8 in\)"
    ):
        factorize_conv(nn.Conv2d(8, 16, 3), "c", Selector(rank=(20, 4)))
    with pytest.raises(PressoError, match=r"'l' is a Linear layer: give it one rank, not a pair \[2, 3\]"):
        factorize_linear(nn.Linear(8, 8), "l", Selector(rank=(2, 3)))
    with pytest.raises(PressoError, match="Tucker-2 needs groups=1"):
        presso.factorize(nn.Conv2d(8, 16, 3, groups=2), rank=4)
    with pytest.raises(PressoError, match="takes a torch.nn.Module"):
        presso.factorize(np.zeros((4, 4)), rank=2)


def test_a_rank_that_saves_nothing_is_left_whole_in_a_model_and_said_so():
    _, decision = factorize_linear(nn.Linear(64, 64), "fc", Selector(rank=40))
    assert not decision.factorized and "rank 40 saves nothing (pays below 32.0)" in decision.reason
    new, decision = factorize_linear(nn.Linear(64, 64), "fc", Selector(rank=16))
    assert decision.factorized and decision.parameters_after == 16 * 128 + 64 < decision.parameters_before
    assert decision.macs_after == 16 * 128 and decision.macs_before == 64 * 64


def test_multihead_attention_out_proj_is_not_factorizable():
    from presso.techniques.lowrank.factorize import factorizable

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.ffn = nn.Linear(16, 16)

    # MultiheadAttention's forward reads out_proj.weight itself: a LowRankLinear there breaks it.
    assert factorizable(Block()) == ["ffn"]
