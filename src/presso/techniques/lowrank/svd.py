"""Truncated SVD of Linear layers: W (m x n) ~ (U_r S_r) V_r^T, run as two thin Linears.

x -> V_r^T x (r outputs, no bias) -> (U_r S_r) (.) + b. The singular values are folded
into the second factor, so the first has orthonormal rows (its values stay small and
evenly spread, which keeps a later int8 stage's per-channel scales fine). Parameters
fall from m*n to r*(m+n): it pays when r < m*n / (m+n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from presso.techniques.lowrank.ranks import tail_error


class LowRankLinear(nn.Sequential):
    """A Linear layer replaced by its rank-r factors (``[0]``: n -> r, ``[1]``: r -> m)."""

    def __init__(self, first: nn.Linear, second: nn.Linear):
        super().__init__(first, second)

    @property
    def rank(self) -> int:
        return cast(nn.Linear, self[0]).out_features


@dataclass(frozen=True)
class LinearFactors:
    first: np.ndarray  # (r, n) = V_r^T (activation-weighted: V_r^T S^-1)
    second: np.ndarray  # (m, r) = U_r S_r
    sigma: np.ndarray  # all min(m, n) singular values, descending (weighted: of W S)
    rank: int
    measured_error: float | None = None  # ||W - second @ first|| when sigma is not W's own spectrum
    weight_norm: float | None = None  # ||W||, likewise

    @property
    def error(self) -> float:
        """Frobenius error ||W - second @ first||: for plain SVD, sqrt of the discarded sigma^2."""
        return self.measured_error if self.measured_error is not None else tail_error(self.sigma, self.rank)

    @property
    def relative_error(self) -> float:
        total = (
            self.weight_norm
            if self.weight_norm is not None
            else float(np.sqrt(np.sum(self.sigma.astype(np.float64) ** 2)))
        )
        return self.error / total if total else 0.0


def spectrum(weight: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U, sigma, V^T of a 2-D weight, in float64 (float32 SVD loses the small tail values
    that the error formula sums)."""
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    return np.linalg.svd(w.astype(np.float64), full_matrices=False)


def svd_factors(weight, rank: int, decomposed=None) -> LinearFactors:
    u, s, vt = decomposed if decomposed is not None else spectrum(weight)
    return LinearFactors(first=vt[:rank], second=u[:, :rank] * s[:rank], sigma=s, rank=rank)


# Ridge added to the input covariance, as a multiple of its mean eigenvalue. The few
# hundred calibration rows span only part of a wide layer's inputs; without a ridge the
# factors ignore every other direction and held-out rows suffer. 1.0 measured best on
# the 1024-wide digits MLP (keep 25%, no fine-tuning: accuracy drop 0.6 points vs 1.4 at
# 0.1 and 0.01, and 3.0 for plain SVD).
RIDGE = 1.0


def weighted_factors(weight, gram: np.ndarray, choose_rank) -> LinearFactors:
    """Activation-aware truncated SVD: the rank-r factors that minimise the layer's output
    error on its inputs, ||(W - W_r) X^T||, rather than ||W - W_r|| (as in SVD-LLM's
    truncation-aware whitening). With the input covariance C + ridge = S S^T, the SVD of
    W S truncated to r gives W_r = U_r S_r V_r^T S^-1. ``choose_rank(sigma)`` picks r from
    the singular values of W S (the output error's spectrum)."""
    w = (weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)).astype(
        np.float64
    )
    c = np.asarray(gram, np.float64)
    c = c + RIDGE * max(np.trace(c) / len(c), 1e-12) * np.eye(len(c))
    lam, q = np.linalg.eigh(c)
    lam = np.maximum(lam, 1e-12 * lam.max())
    u, s, vt = np.linalg.svd(w @ (q * np.sqrt(lam)), full_matrices=False)
    r = choose_rank(s)
    first = vt[:r] @ (q / np.sqrt(lam)).T
    second = u[:, :r] * s[:r]
    return LinearFactors(
        first=first,
        second=second,
        sigma=s,
        rank=r,
        measured_error=float(np.linalg.norm(w - second @ first)),
        weight_norm=float(np.linalg.norm(w)),
    )


def low_rank_linear(layer: nn.Linear, factors: LinearFactors) -> LowRankLinear:
    r = factors.rank
    first = nn.Linear(layer.in_features, r, bias=False)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
    dtype, device = layer.weight.dtype, layer.weight.device
    with torch.no_grad():
        first.weight.copy_(torch.as_tensor(factors.first, dtype=dtype))
        second.weight.copy_(torch.as_tensor(factors.second, dtype=dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return LowRankLinear(first, second).to(device)


def linear_pays(m: int, n: int, rank: int) -> bool:
    """Fewer parameters and multiply-adds than the dense layer."""
    return rank * (m + n) < m * n
