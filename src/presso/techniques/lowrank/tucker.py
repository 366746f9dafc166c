"""Tucker-2 decomposition of convolutions over the output- and input-channel modes.

W (O x I x k...) ~ core (R_out x R_in x k...) x_0 U_out (O x R_out) x_1 U_in (I x R_in),
run as a 1x1 conv (I -> R_in, weights U_in^T), the core conv (R_in -> R_out, the
layer's own kernel, stride, padding and dilation) and a 1x1 conv (R_out -> O, weights
U_out, the layer's bias). Exact when the ranks are full; the padding modes all commute
with the bias-free 1x1 conv in front, so any padding is kept.

Ranks come from the singular values of the two mode unfoldings (HOSVD); the factors
start there and are refined by a few HOOI sweeps (tensorly's ``partial_tucker``; we
use tensorly rather than our own HOOI loop because it is a maintained reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, cast

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError
from presso.techniques.lowrank.ranks import check_selector, rank_from_spectrum

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
Conv: TypeAlias = nn.Conv1d | nn.Conv2d | nn.Conv3d  # an instance of CONVS
_HOOI_SWEEPS = 10


class TuckerConv(nn.Sequential):
    """A convolution replaced by 1x1 -> core kxk -> 1x1 (Tucker-2)."""

    def __init__(self, first: nn.Module, core: nn.Module, last: nn.Module):
        super().__init__(first, core, last)

    @property
    def ranks(self) -> tuple[int, int]:
        core = cast(Conv, self[1])
        return core.out_channels, core.in_channels


@dataclass(frozen=True)
class TuckerFactors:
    core: np.ndarray  # (R_out, R_in, k...)
    out_factor: np.ndarray  # (O, R_out)
    in_factor: np.ndarray  # (I, R_in)
    error: float  # Frobenius ||W - reconstruction||, computed
    norm: float  # ||W||

    @property
    def ranks(self) -> tuple[int, int]:
        return self.core.shape[0], self.core.shape[1]

    @property
    def relative_error(self) -> float:
        return self.error / self.norm if self.norm else 0.0

    def reconstruct(self) -> np.ndarray:
        return np.einsum("ab...,oa,ib->oi...", self.core, self.out_factor, self.in_factor)


def mode_spectra(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the output-channel and input-channel unfoldings."""
    w = np.asarray(weight, np.float64)
    out_unf = w.reshape(w.shape[0], -1)
    in_unf = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
    return np.linalg.svd(out_unf, compute_uv=False), np.linalg.svd(in_unf, compute_uv=False)


def tucker_ranks(
    weight: np.ndarray,
    *,
    rank: int | None = None,
    ratio: float | None = None,
    energy: float | None = None,
    max_error: float | None = None,
    layer: str = "the layer",
) -> tuple[int, int]:
    """(R_out, R_in) for a selector. ``rank`` caps both modes (an error if it exceeds both
    channel counts); ``max_error`` gives each mode half the squared budget, which bounds
    the truncated-HOSVD error by ``max_error`` (its squared error is at most the sum of
    the discarded squared mode singular values)."""
    check_selector(rank, ratio, energy, max_error, layer)
    s_out, s_in = mode_spectra(weight)
    if rank is not None:
        if rank > max(len(s_out), len(s_in)):
            raise PressoError(
                f"rank {rank} is larger than both channel counts ({len(s_out)} out, {len(s_in)} in) "
                f"of {layer}; choose a rank between 1 and {max(len(s_out), len(s_in))}."
            )
        return min(rank, len(s_out)), min(rank, len(s_in))
    per_mode = max_error / np.sqrt(2) if max_error is not None else None
    r_out, r_in = (
        rank_from_spectrum(s, ratio=ratio, energy=energy, max_error=per_mode, layer=layer)
        for s in (s_out, s_in)
    )
    return r_out, r_in


def tucker2(weight, ranks: tuple[int, int], sweeps: int = _HOOI_SWEEPS) -> TuckerFactors:
    """Tucker-2 factors of a conv weight at (R_out, R_in), HOSVD-initialised, HOOI-refined."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    w = (weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)).astype(
        np.float64
    )
    r_out, r_in = ranks
    if not (1 <= r_out <= w.shape[0] and 1 <= r_in <= w.shape[1]):
        raise PressoError(
            f"Tucker ranks must be within 1..{w.shape[0]} (out) and 1..{w.shape[1]} (in); got {ranks}."
        )
    # The core's output-mode rank cannot exceed R_in * k (nor the input one R_out * k):
    # larger ranks add channels that carry nothing, so they are trimmed.
    kernel = int(np.prod(w.shape[2:]))
    r_out, r_in = min(r_out, r_in * kernel), min(r_in, r_out * kernel)
    tl.set_backend("numpy")
    (core, (u_out, u_in)), _ = partial_tucker(
        w, rank=[r_out, r_in], modes=[0, 1], init="svd", n_iter_max=sweeps, tol=1e-10
    )
    core, u_out, u_in = np.asarray(core), np.asarray(u_out), np.asarray(u_in)
    approx = np.einsum("ab...,oa,ib->oi...", core, u_out, u_in)
    return TuckerFactors(
        core=core,
        out_factor=u_out,
        in_factor=u_in,
        error=float(np.linalg.norm(w - approx)),
        norm=float(np.linalg.norm(w)),
    )


def tucker_conv(layer: Conv, factors: TuckerFactors) -> TuckerConv:
    if layer.groups != 1:
        raise PressoError(f"Tucker-2 needs an ungrouped convolution; this one has groups={layer.groups}.")
    # The layer's own class, given its own geometry (torch types a ConvNd's kernel_size,
    # stride... as tuple[int, ...], wider than each class's constructor takes).
    conv: Callable[..., Conv] = type(layer)
    r_out, r_in = factors.ranks
    ones = (1,) * (layer.weight.dim() - 2)
    first = conv(layer.in_channels, r_in, 1, bias=False)
    core = conv(
        r_in,
        r_out,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=False,
        padding_mode=layer.padding_mode,
    )
    last = conv(r_out, layer.out_channels, 1, bias=layer.bias is not None)
    dtype = layer.weight.dtype
    with torch.no_grad():
        first.weight.copy_(torch.as_tensor(factors.in_factor.T.reshape(r_in, -1, *ones), dtype=dtype))
        core.weight.copy_(torch.as_tensor(factors.core, dtype=dtype))
        last.weight.copy_(
            torch.as_tensor(factors.out_factor.reshape(layer.out_channels, r_out, *ones), dtype=dtype)
        )
        if layer.bias is not None:
            assert last.bias is not None  # made with a bias just above
            last.bias.copy_(layer.bias)
    return TuckerConv(first, core, last).to(layer.weight.device)


def tucker_parameters(out_ch: int, in_ch: int, kernel: int, ranks: tuple[int, int]) -> int:
    r_out, r_in = ranks
    return in_ch * r_in + r_in * r_out * kernel + r_out * out_ch


def conv_pays(layer: Conv, ranks: tuple[int, int]) -> bool:
    o, i, *k = layer.weight.shape
    kernel = int(np.prod(k))
    return tucker_parameters(o, i, kernel, ranks) < o * i * kernel
