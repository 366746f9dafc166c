"""How many singular values a layer keeps: by fixed rank, ratio, kept energy or error.

The Frobenius error of a truncated SVD is ``sqrt(sum of the discarded sigma_i^2)``
(Eckart-Young), so every rule here reads off the spectrum without reconstructing W.
"""

from __future__ import annotations

import math

import numpy as np

from presso.errors import PressoError


def check_selector(
    rank: int | None = None,
    ratio: float | None = None,
    energy: float | None = None,
    max_error: float | None = None,
    where: str = "",
) -> None:
    """Clear errors for impossible selectors (before any layer is touched)."""
    given = {
        k: v
        for k, v in (("rank", rank), ("ratio", ratio), ("energy", energy), ("max_error", max_error))
        if v is not None
    }
    at = f" ({where})" if where else ""
    if len(given) > 1:
        raise PressoError(f"Give one of rank, ratio, energy or max_error{at}; got {', '.join(given)}.")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1):
        raise PressoError(
            f"rank must be a whole number >= 1{at}; got {rank!r}. A rank of 0 would remove the layer."
        )
    if ratio is not None and not 0 < ratio <= 1:
        raise PressoError(f"ratio is the fraction of the full rank kept, in (0, 1]{at}; got {ratio!r}.")
    if energy is not None and not 0 < energy <= 1:
        raise PressoError(
            f"energy is the fraction of the spectral energy (sum of sigma^2) kept, in (0, 1]{at}; "
            f"got {energy!r}."
        )
    if max_error is not None and not 0 <= max_error < 1:
        raise PressoError(
            f"max_error is the largest relative Frobenius error allowed, in [0, 1){at}; got {max_error!r}."
        )


def rank_from_spectrum(
    sigma: np.ndarray,
    *,
    rank: int | None = None,
    ratio: float | None = None,
    energy: float | None = None,
    max_error: float | None = None,
    layer: str = "the layer",
) -> int:
    """The rank a selector asks for, given the singular values ``sigma`` (descending).

    ``rank`` larger than ``len(sigma)`` (= min(m, n)) is an error naming the layer, not a
    silent clamp: the user asked for something the layer cannot give.
    """
    check_selector(rank, ratio, energy, max_error, layer)
    full = len(sigma)
    if rank is not None:
        if rank > full:
            raise PressoError(
                f"rank {rank} is larger than min(m, n) = {full} for {layer}; "
                f"choose a rank between 1 and {full}."
            )
        return int(rank)
    if ratio is not None:
        return max(1, min(full, math.ceil(ratio * full - 1e-9)))
    power = np.asarray(sigma, np.float64) ** 2
    total = float(power.sum())
    if total == 0.0:
        return 1
    if energy is not None:
        kept = np.cumsum(power) / total
        return min(full, int(np.searchsorted(kept, energy - 1e-12)) + 1)
    if max_error is not None:
        # tail[r] = relative error when keeping r values (r = 0..full)
        tail = np.sqrt(np.maximum(total - np.concatenate([[0.0], np.cumsum(power)]), 0.0) / total)
        return max(1, int(np.argmax(tail <= max_error + 1e-12)))
    raise PressoError(f"Give a rank, ratio, energy or max_error for {layer}.")


def tail_error(sigma: np.ndarray, rank: int) -> float:
    """Frobenius error of keeping the ``rank`` largest singular values: sqrt(sum of the rest squared)."""
    s = np.asarray(sigma, np.float64)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))
