"""Sparsity-inducing penalties to add to a training loss before pruning.

- ``l1_penalty(ws)``          = ``sum |w| / N`` over all weights of all tensors (``N`` their total
  count), so the strength means the same for a small and a large model
- ``group_lasso_penalty(ws)`` = ``sum_g sqrt(p_g) * ||w_g||_2 / N`` over the output channels ``g``
  (rows of a Linear weight ``(out, in)``, filters of a Conv weight ``(out, in, *k)``), ``p_g``
  the group size (Yuan & Lin 2006); it drives whole channels to zero, ready for
  :func:`~presso.techniques.pruning.structured.prune_channels`

Training with a penalty takes one line::

    loss_fn = regularized(nn.MSELoss(), [model.fc1, model.fc2], group_lasso=1.0)
    loss = loss_fn(model(x), y)                          # task loss + 1.0 * group lasso
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import torch
from torch import nn

from presso.errors import PressoError


def _tensors(weights: Iterable[torch.Tensor], what: str) -> list[torch.Tensor]:
    ws = list(weights)
    if not ws:
        raise PressoError(
            f"No weights given to '{what}'; pass the tensors to penalise, e.g. [m.weight for m in layers]."
        )
    return ws


def l1_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """Mean ``|w|`` over all weights of all tensors: ``sum |w| / N``; its gradient is ``sign(w) / N``.

    Examples
    --------
    >>> l1_penalty([torch.tensor([1.0, -3.0]), torch.tensor([[2.0, 0.0]])]).item()
    1.5
    """
    ws = _tensors(weights, "l1_penalty")
    total = sum(w.numel() for w in ws)
    summed = cast(torch.Tensor, sum(w.abs().sum() for w in ws))  # ws is not empty: a tensor
    return summed / max(total, 1)


def group_lasso_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """Group lasso over output channels: ``sum_g sqrt(p_g) * ||w_g||_2 / N``.

    A group is row ``c`` of a Linear weight ``(out, in)`` or filter ``c`` of a Conv weight
    ``(out, in, *k)``; ``p_g`` is its size and ``N`` the count of all weights. The gradient
    for a group is ``sqrt(p_g) * w_g / ||w_g|| / N`` (zero for an all-zero group).

    Examples
    --------
    >>> group_lasso_penalty([torch.tensor([[3.0, 4.0], [0.0, 0.0]])]).item()  # sqrt(2) * 5 / 4
    1.7677669525146484
    """
    ws = _tensors(weights, "group_lasso_penalty")
    total, acc = 0, cast(torch.Tensor, 0.0)  # a tensor after the first weight (ws is not empty)
    for w in ws:
        if w.dim() < 2:
            raise PressoError(
                f"Group lasso needs weights with at least 2 dimensions (out, in, ...); got "
                f"shape {tuple(w.shape)}. Pass Linear or Conv weights, not biases."
            )
        rows = w.reshape(w.shape[0], -1)  # (out, p)
        acc = acc + math.sqrt(rows.shape[1]) * torch.linalg.vector_norm(rows, dim=1).sum()
        total += w.numel()
    return acc / max(total, 1)


def _check_strength(value, key: str) -> float:
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not math.isfinite(value) or value < 0:
        raise PressoError(
            f"The '{key}' option of regularized() must be a finite number >= 0 (the penalty "
            f"strength; 0 turns it off). Got {value!r} instead."
        )
    return float(value)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def regularized(
    loss_fn: LossFn, layers: Sequence[nn.Module], l1: float = 0.0, group_lasso: float = 0.0
) -> LossFn:
    """``loss_fn`` plus ``l1 * l1_penalty + group_lasso * group_lasso_penalty`` of the layers' weights.

    The returned function reads ``layer.weight`` of each layer at every call: with masks from
    ``torch.nn.utils.prune`` (:func:`~presso.techniques.pruning.masks.apply_masks`) that attribute
    is recomputed by a hook at each forward, so the penalty always sees the current, masked
    weights. With both strengths 0, ``loss_fn`` itself is returned.

    Examples
    --------
    >>> layer = nn.Linear(2, 1)
    >>> loss_fn = regularized(nn.MSELoss(), [layer], l1=0.1)
    >>> out = layer(torch.ones(3, 2))
    >>> bool(loss_fn(out, out.detach()) > 0)
    True
    """
    l1 = _check_strength(l1, "l1")
    group_lasso = _check_strength(group_lasso, "group_lasso")
    if l1 == 0 and group_lasso == 0:
        return loss_fn
    layers = list(layers)
    if not layers:
        raise PressoError(
            "regularized() got no layers to penalise; pass e.g. [model.fc1, model.fc2], or set "
            "l1=0 and group_lasso=0."
        )
    for i, layer in enumerate(layers):
        if not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise PressoError(
                f"Layer {i} given to regularized() ({type(layer).__name__}) has no weight "
                "tensor; pass Linear or Conv modules."
            )

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Read now: pruning hooks replace .weight every forward (a tensor: checked above).
        ws = [cast(torch.Tensor, layer.weight) for layer in layers]
        total = loss_fn(out, target)
        if l1:
            total = total + l1 * l1_penalty(ws)
        if group_lasso:
            total = total + group_lasso * group_lasso_penalty(ws)
        return total

    return loss
