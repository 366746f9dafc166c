"""Pruning masks (unstructured and N:M), sparsity schedules, and applying masks to modules.

A mask is a bool tensor shaped like its weight: ``True`` keeps the weight. A user prunes
in a few lines::

    weights = prunable_weights(model)                      # {"fc1.weight": tensor, ...}
    masks = unstructured_masks(weights, sparsity=0.9)      # global magnitude ranking
    apply_masks(model, masks)                              # weight = weight_orig * mask
    ...                                                    # fine-tune; masked weights stay 0
    make_permanent(model)                                  # plain weights with zeros
"""

from __future__ import annotations

import math
from typing import TypeAlias, cast

import torch
from torch import nn

from presso.errors import PressoError

SCOPES = ("global", "layer")


def _check_sparsity(sparsity, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PressoError(
            f"The '{what}' option must be a number in [0, 1) (the fraction of weights set to "
            f"zero). Got {sparsity!r} instead."
        )
    return float(sparsity)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` lowest scores; ties go to the earlier position (stable)."""
    return torch.argsort(scores, stable=True)[:k]


def unstructured_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    scores: dict[str, torch.Tensor] | None = None,
    scope: str = "global",
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring ``1 - sparsity`` of the weights; returns bool masks.

    ``scores`` defaults to ``|w|`` (magnitude pruning); pass e.g. ``taylor`` scores per
    weight name. ``scope="global"`` ranks all layers together and zeroes exactly
    ``round(sparsity * total)`` weights (Python rounding, half to even); ``scope="layer"`` zeroes
    ``round(sparsity * numel)`` of each layer. Equal scores are pruned in order of
    position (layers in the order of ``weights``), so the result is deterministic.

    Examples
    --------
    >>> w = {"a": torch.tensor([1.0, -3.0, 0.5, 2.0])}
    >>> unstructured_masks(w, 0.5)["a"].tolist()
    [False, True, False, True]
    """
    sparsity = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PressoError(f"The 'scope' option must be one of {list(SCOPES)}. Got {scope!r} instead.")
    if not weights:
        raise PressoError(
            "No weights to prune: pass a dict of {name: weight tensor}, e.g. prunable_weights(model)."
        )
    scores = scores if scores is not None else {n: w.detach().abs() for n, w in weights.items()}
    for name, w in weights.items():
        s = scores.get(name)
        if s is None or tuple(s.shape) != tuple(w.shape):
            got = "none" if s is None else f"shape {tuple(s.shape)}"
            raise PressoError(
                f"The scores for weight '{name}' must have its shape {tuple(w.shape)}; got {got}. "
                "Give one score per weight, e.g. criteria.magnitude(w)."
            )
    names = list(weights)
    if scope == "layer":
        out = {}
        for name in names:
            flat = scores[name].detach().reshape(-1).float()
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[_lowest(flat, round(sparsity * flat.numel()))] = False
            out[name] = keep.reshape(weights[name].shape)
        return out
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])  # (total,)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[_lowest(flat, round(sparsity * flat.numel()))] = False
    out, start = {}, 0
    for name in names:
        n = weights[name].numel()
        out[name] = keep[start : start + n].reshape(weights[name].shape)
        start += n
    return out


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4, name: str = "weight") -> torch.Tensor:
    """N:M semi-structured mask: the ``n`` largest ``|w|`` of every ``m`` consecutive weights
    along the input axis (the last axis of a Linear weight (out, in); the flattened
    (in, *kernel) axis of a Conv weight). Ties keep the earlier position.

    Examples
    --------
    >>> nm_mask(torch.tensor([[4.0, -1.0, 0.5, -3.0]])).tolist()
    [[True, False, False, True]]
    """
    for key, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PressoError(
                f"The '{key}' option of N:M sparsity must be a positive int. Got {v!r} instead."
            )
    if n > m:
        raise PressoError(
            f"N:M sparsity keeps n of every m weights, so n must be <= m. Got n={n}, m={m}; "
            "use e.g. n=2, m=4."
        )
    if w.dim() < 2:
        raise PressoError(f"N:M sparsity needs a weight (out, in, ...); '{name}' has shape {tuple(w.shape)}.")
    rows = w.detach().reshape(w.shape[0], -1)  # (out, K)
    k = rows.shape[1]
    if k % m:
        raise PressoError(
            f"Layer '{name}' has {k} inputs per output (weight shape {tuple(w.shape)}), not a "
            f"multiple of m={m}, so it cannot be {n}:{m} sparse. Leave this layer out or choose "
            f"an m that divides {k}."
        )
    groups = rows.abs().reshape(rows.shape[0], k // m, m)  # (out, K/m, m)
    order = torch.argsort(-groups, dim=-1, stable=True)[..., :n]  # n largest, earlier first on ties
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return keep.reshape(w.shape)


def polynomial_sparsity(
    step: int, total_steps: int, final: float, initial: float = 0.0, power: int = 3
) -> float:
    """Gradual-pruning target at ``step`` (Zhu & Gupta 2017):
    ``final + (initial - final) * (1 - step / total_steps) ** power``, constant after the end.

    Examples
    --------
    >>> polynomial_sparsity(0, 10, 0.9), polynomial_sparsity(10, 10, 0.9)
    (0.0, 0.9)
    """
    final, initial = _check_sparsity(final, "final"), _check_sparsity(initial, "initial")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise PressoError(f"The 'total_steps' option must be a positive int. Got {total_steps!r} instead.")
    if not isinstance(power, (int, float)) or power <= 0:
        raise PressoError(f"The 'power' option must be a positive number. Got {power!r} instead.")
    if initial > final:
        raise PressoError(f"The 'initial' sparsity ({initial}) must not exceed the 'final' one ({final}).")
    t = min(max(step, 0), total_steps) / total_steps
    return final + (initial - final) * (1.0 - t) ** power


def iterative_sparsity(round: int, rounds: int, final: float) -> float:
    """Sparsity after ``round`` of ``rounds`` prune/fine-tune rounds: ``1 - (1 - final) ** (round / rounds)``,
    so every round removes the same fraction of the surviving weights.

    Examples
    --------
    >>> round(iterative_sparsity(1, 2, 0.75), 6)
    0.5
    """
    final = _check_sparsity(final, "final")
    if not isinstance(rounds, int) or rounds < 1:
        raise PressoError(f"The 'rounds' option must be a positive int. Got {rounds!r} instead.")
    r = min(max(round, 0), rounds)
    return 1.0 - math.pow(1.0 - final, r / rounds)


PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Prunable: TypeAlias = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d  # an instance of PRUNABLE


def prunable_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": weight}`` of every Linear and Conv layer (the tensors, not copies)."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in module.named_modules()
        if isinstance(m, PRUNABLE)
    }


def _split(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    owner, _, param = key.rpartition(".")
    try:
        sub = module.get_submodule(owner) if owner else module
    except AttributeError:
        sub = None
    if sub is None or not hasattr(sub, param):
        raise PressoError(
            f"No parameter '{key}' in the model; masks are keyed like named_parameters(), "
            "e.g. 'fc1.weight' (see prunable_weights(model))."
        )
    return sub, param


def apply_masks(module: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Mask parameters in place with ``torch.nn.utils.prune`` (``weight = weight_orig * mask``),
    so masked weights stay zero while fine-tuning. Masking twice multiplies the masks."""
    from torch.nn.utils import prune

    for key, mask in masks.items():
        sub, param = _split(module, key)
        current = getattr(sub, param)
        if tuple(mask.shape) != tuple(current.shape):
            raise PressoError(
                f"The mask for '{key}' has shape {tuple(mask.shape)} but the parameter has "
                f"{tuple(current.shape)}."
            )
        prune.custom_from_mask(sub, param, mask.to(device=current.device, dtype=torch.bool))
    return module


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as the layer's forward uses it, detached: with :func:`apply_masks`' hooks
    ``weight_orig * weight_mask`` now (``.weight`` is only refreshed at the next forward)."""
    if hasattr(layer, "weight_mask"):
        return (cast(torch.Tensor, layer.weight_orig) * cast(torch.Tensor, layer.weight_mask)).detach()
    return cast(torch.Tensor, layer.weight).detach()


def make_permanent(module: nn.Module) -> nn.Module:
    """Fold every mask into its parameter (plain weights with zeros, no hooks left)."""
    from torch.nn.utils import prune

    for sub in module.modules():
        for hook in [h for h in sub._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]:
            prune.remove(sub, hook._tensor_name)
    return module


def sparsity_of(tensors: dict[str, torch.Tensor]) -> float:
    """Fraction of zeros over all ``tensors`` (weights or bool masks: False counts as zero)."""
    total = sum(t.numel() for t in tensors.values())
    zeros = sum(int((t == 0).sum()) for t in tensors.values())
    return zeros / max(total, 1)
