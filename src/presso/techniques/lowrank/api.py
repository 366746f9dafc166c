"""``presso.factorize``: the low-rank math on a layer or a model, without a pipeline."""

from __future__ import annotations

import copy

from torch import nn

from presso.errors import PressoError
from presso.techniques.lowrank.factorize import (
    Selector,
    factorizable,
    factorize_layer,
    factorize_layers,
)
from presso.techniques.lowrank.tucker import CONVS


def factorize(
    layer_or_model: nn.Module,
    rank: int | None = None,
    *,
    ratio: float | None = None,
    energy: float | None = None,
    max_error: float | None = None,
    layers: list[str] | None = None,
) -> nn.Module:
    """Replace Linear layers by truncated-SVD factors and convolutions by Tucker-2 factors.

    Give one rank selector: ``rank`` (fixed; for a convolution it caps both channel
    modes), ``ratio`` (fraction of the full rank), ``energy`` (fraction of the sum of
    squared singular values kept) or ``max_error`` (largest relative Frobenius error).
    The input is never changed; a factorized copy is returned.

    A single Linear / Conv layer is always factorized as asked. In a model, ``layers``
    (module names; default: every Linear / Conv) are factorized where that saves
    parameters and left alone where it would not. Every factorized layer carries a
    ``decision`` with its shape, rank, parameters, multiply-adds and reconstruction
    error (for SVD, ``sqrt(sum of the discarded singular values squared)``).

    >>> import torch, presso
    >>> layer = torch.nn.Linear(512, 256)
    >>> small = presso.factorize(layer, energy=0.9)     # doctest: +SKIP
    >>> small.decision.rank, small.decision.relative_error  # doctest: +SKIP
    """
    sel = Selector(rank=rank, ratio=ratio, energy=energy, max_error=max_error)
    if not isinstance(layer_or_model, nn.Module):
        raise PressoError(
            f"factorize takes a torch.nn.Module (a layer or a model); got {type(layer_or_model).__name__}."
        )
    target = copy.deepcopy(layer_or_model)
    if isinstance(target, (nn.Linear, *CONVS)):
        new, decision = factorize_layer(target, type(target).__name__, sel, require_savings=False)
        if new is None:
            raise PressoError(f"This layer cannot be factorized: {decision.reason}.")
        # torch's stub types Module.__setattr__'s value as Tensor | Module; any attribute works.
        new.decision = decision  # type: ignore[assignment]
        return new
    names = factorizable(target) if layers is None else list(layers)
    missing = [n for n in names if n not in dict(target.named_modules())]
    if missing:
        raise PressoError(
            f"No layer named {', '.join(map(repr, missing))} in the model; "
            f"its Linear / Conv layers are: {', '.join(factorizable(target)) or 'none'}."
        )
    decisions = factorize_layers(target, names, sel)
    for d in decisions:
        if d.factorized:
            target.get_submodule(d.layer).decision = d  # type: ignore[assignment]  # as above
    return target
