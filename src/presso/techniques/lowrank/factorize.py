"""Factorize the Linear / Conv layers of a model in place, one decision per layer.

Each layer gets a rank from one selector (fixed rank, ratio of full rank, kept energy,
maximum relative error, or ``keep``: a fraction of its parameters, which the recipe's
automatic search uses), is replaced by its factors only where that pays, and gets a row
for the report: shape, rank, parameters and multiply-adds before / after, Frobenius
error (for SVD: the square root of the discarded singular values squared) and relative
error, or why it was left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.lowrank.ranks import check_selector, rank_from_spectrum
from presso.techniques.lowrank.svd import (
    LowRankLinear,
    linear_pays,
    low_rank_linear,
    spectrum,
    svd_factors,
    weighted_factors,
)
from presso.techniques.lowrank.tucker import (
    CONVS,
    Conv,
    TuckerConv,
    conv_pays,
    tucker2,
    tucker_conv,
    tucker_parameters,
    tucker_ranks,
)


@dataclass(frozen=True)
class Selector:
    """One way of choosing ranks; exactly one field is set."""

    rank: int | tuple[int, int] | None = None  # a pair: (R_out, R_in) of a convolution
    ratio: float | None = None
    energy: float | None = None
    max_error: float | None = None
    keep: float | None = None  # fraction of the layer's parameters kept (auto search)

    def __post_init__(self):
        if self.keep is not None:
            if any(v is not None for v in (self.rank, self.ratio, self.energy, self.max_error)):
                raise PressoError(
                    "keep is its own rank selector; do not combine it with rank, ratio, energy or max_error."
                )
            if not 0 < self.keep < 1:
                raise PressoError(
                    f"keep is the fraction of a layer's parameters kept, in (0, 1); got {self.keep!r}."
                )
        elif isinstance(self.rank, tuple):
            if len(self.rank) != 2 or any(not isinstance(r, int) or r < 1 for r in self.rank):
                raise PressoError(
                    f"A convolution's ranks are a pair [R_out, R_in] of whole numbers >= 1; "
                    f"got {list(self.rank)}."
                )
        else:
            check_selector(self.rank, self.ratio, self.energy, self.max_error)
            if all(v is None for v in (self.rank, self.ratio, self.energy, self.max_error)):
                raise PressoError("Give a rank selector: rank, ratio, energy or max_error (e.g. energy=0.9).")

    def spectral(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "keep" and v is not None}

    def describe(self) -> str:
        k, v = next((k, v) for k, v in asdict(self).items() if v is not None)
        return f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"


@dataclass
class LayerDecision:
    layer: str
    method: str  # "svd" | "tucker2"
    shape: tuple[int, ...]
    rank: str  # "r" or "R_out x R_in"
    parameters_before: int
    parameters_after: int
    macs_before: int  # per input row (Linear) / per output position (conv)
    macs_after: int
    error: float | None
    relative_error: float | None
    factorized: bool
    reason: str = ""

    def row(self) -> dict:
        out: dict[str, Any] = {
            "layer": self.layer,
            "method": self.method,
            "shape": "x".join(map(str, self.shape)),
            "rank": self.rank,
            "parameters": f"{self.parameters_before:,} -> {self.parameters_after:,}",
            "macs": f"{self.macs_before:,} -> {self.macs_after:,}",
        }
        if self.error is not None:
            assert self.relative_error is not None  # measured with the error
            out["frobenius_error"] = round(self.error, 6)
            out["relative_error"] = round(self.relative_error, 6)
        out["factorized"] = self.factorized
        if self.reason:
            out["reason"] = self.reason
        return out


def _n_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _keep_rank_linear(m: int, n: int, keep: float) -> int:
    return max(1, min(min(m, n), math.floor(keep * m * n / (m + n))))


def _keep_ranks_conv(o: int, i: int, kernel: int, keep: float) -> tuple[int, int]:
    """Ranks in proportion to the channel counts, the largest whose Tucker-2 parameters
    stay within ``keep`` of the dense layer's."""
    budget = keep * o * i * kernel
    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the common fraction of both channel counts
        mid = (lo + hi) / 2
        ranks = (max(1, math.floor(mid * o)), max(1, math.floor(mid * i)))
        lo, hi = (mid, hi) if tucker_parameters(o, i, kernel, ranks) <= budget else (lo, mid)
    return max(1, math.floor(lo * o)), max(1, math.floor(lo * i))


def left_whole(layer: nn.Module, name: str, reason: str) -> LayerDecision:
    """The row of a layer that stays dense."""
    weight = cast(torch.Tensor, layer.weight)  # a Linear or Conv layer
    macs = int(np.prod(weight.shape))
    return LayerDecision(
        name,
        "svd" if isinstance(layer, nn.Linear) else "tucker2",
        tuple(weight.shape),
        "-",
        _n_params(layer),
        _n_params(layer),
        macs,
        macs,
        None,
        None,
        factorized=False,
        reason=reason,
    )


def factorize_linear(
    layer: nn.Linear, name: str, sel: Selector, require_savings: bool = True, gram: np.ndarray | None = None
) -> tuple[LowRankLinear | None, LayerDecision]:
    """``gram``: the layer's input covariance X^T X / N on calibration rows, for
    activation-aware factors (None: plain truncated SVD of the weight)."""
    m, n = layer.weight.shape
    if isinstance(sel.rank, tuple):
        raise PressoError(f"'{name}' is a Linear layer: give it one rank, not a pair {list(sel.rank)}.")

    def choose(sigma: np.ndarray) -> int:
        return (
            _keep_rank_linear(m, n, sel.keep)
            if sel.keep is not None
            else rank_from_spectrum(sigma, **sel.spectral(), layer=name)
        )

    if gram is not None:
        factors = weighted_factors(layer.weight, gram, choose)
    else:
        decomposed = spectrum(layer.weight)
        factors = svd_factors(None, choose(decomposed[1]), decomposed)
    r = factors.rank
    bias = 0 if layer.bias is None else m
    decision = LayerDecision(
        name,
        "svd",
        (m, n),
        str(r),
        _n_params(layer),
        r * (m + n) + bias,
        m * n,
        r * (m + n),
        factors.error,
        factors.relative_error,
        factorized=linear_pays(m, n, r),
    )
    if not decision.factorized:
        decision.reason = f"rank {r} saves nothing (pays below {m * n / (m + n):.1f})"
        if require_savings:
            return None, decision
    return low_rank_linear(layer, factors), decision


def factorize_conv(
    layer: Conv, name: str, sel: Selector, require_savings: bool = True
) -> tuple[TuckerConv | None, LayerDecision]:
    o, i, *k = layer.weight.shape
    kernel = int(np.prod(k))
    shape = tuple(layer.weight.shape)
    bias = 0 if layer.bias is None else o
    dense = left_whole(layer, name, "")
    if layer.groups != 1:
        dense.reason = f"grouped convolution (groups={layer.groups}): Tucker-2 needs groups=1"
        return None, dense
    if kernel == 1:
        dense.reason = (
            "1x1 convolution: a Tucker-2 core would be a third 1x1 layer; factorize it as a matrix instead"
        )
        return None, dense
    if sel.keep is not None:
        ranks = _keep_ranks_conv(o, i, kernel, sel.keep)
    elif isinstance(sel.rank, tuple):
        ranks = sel.rank
        if ranks[0] > o or ranks[1] > i:
            raise PressoError(
                f"ranks {list(ranks)} exceed the channel counts of '{name}' ({o} out, {i} in); "
                f"give [R_out <= {o}, R_in <= {i}]."
            )
    else:
        ranks = tucker_ranks(layer.weight.detach().numpy(), **sel.spectral(), layer=name)
    dense.rank = f"{ranks[0]}x{ranks[1]}"
    pays = conv_pays(layer, ranks)
    if not pays and require_savings:
        dense.reason = f"ranks {ranks[0]}x{ranks[1]} save nothing"
        return None, dense
    factors = tucker2(layer.weight, ranks)
    after = tucker_parameters(o, i, kernel, factors.ranks)
    decision = LayerDecision(
        name,
        "tucker2",
        shape,
        "x".join(map(str, factors.ranks)),
        _n_params(layer),
        after + bias,
        o * i * kernel,
        after,
        factors.error,
        factors.relative_error,
        factorized=pays,
        reason="" if pays else f"ranks {ranks[0]}x{ranks[1]} save nothing",
    )
    return tucker_conv(layer, factors), decision


def factorize_layer(
    layer: nn.Module, name: str, sel: Selector, require_savings: bool = True, gram: np.ndarray | None = None
) -> tuple[nn.Module | None, LayerDecision]:
    """SVD for a Linear layer (activation-weighted with ``gram``), Tucker-2 for a convolution."""
    if isinstance(layer, nn.Linear):
        return factorize_linear(layer, name, sel, require_savings, gram)
    if isinstance(layer, CONVS):
        return factorize_conv(layer, name, sel, require_savings)
    raise PressoError(
        f"Layer '{name}' is a {type(layer).__name__}; only Linear and Conv1d/2d/3d layers can be factorized."
    )


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def factorize_layers(
    model: nn.Module,
    names: list[str],
    selector: Callable[[str], Selector] | Selector,
    log: Callable[[str], None] = lambda _m: None,
) -> list[LayerDecision]:
    """Replace each named Linear / Conv of ``model`` (in place) by its factors where that pays."""
    decisions = []
    for j, name in enumerate(names):
        layer = model.get_submodule(name)
        sel = selector(name) if callable(selector) else selector
        log(f"factorize: layer {j + 1}/{len(names)} ({name})")
        new, decision = factorize_layer(layer, name, sel)
        if new is not None:
            replace_module(model, name, new)
        decisions.append(decision)
    return decisions


def factorizable(model: nn.Module) -> list[str]:
    """Names of the Linear / Conv layers not already factorized.

    nn.MultiheadAttention's out_proj is left out: its forward reads ``out_proj.weight``
    directly (F.multi_head_attention_forward), which a pair of thin layers does not have."""
    inside = {
        f"{n}.{c}"
        for n, m in model.named_modules()
        if isinstance(m, LowRankLinear | TuckerConv | nn.MultiheadAttention)
        for c, _ in m.named_children()
    }
    return [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, *CONVS)) and n and n not in inside
    ]
