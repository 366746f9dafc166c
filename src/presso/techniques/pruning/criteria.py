"""Importance scores for pruning: pure functions of weights, gradients or activations.

Per weight (same shape as ``w``; a higher score means more important):

- ``magnitude(w)``    = ``|w|``
- ``taylor(w, g)``    = ``|w * g|``, the first-order Taylor estimate of the loss change
  when the weight is set to zero: ``L(w = 0) - L(w) ~ -g * w`` (Molchanov et al. 2017/2019)
- ``random_scores(w, seed)`` uniform in [0, 1), a baseline

Per output channel (rows of a Linear weight ``(out, in)``, filters of a Conv weight
``(out, in / groups, *kernel)``), shape ``(out,)``:

- ``l1_norm(w)``            = ``sum_j |w[c, j]|``
- ``l2_norm(w)``            = ``sqrt(sum_j w[c, j] ** 2)``
- ``taylor_channel(w, g)``  = ``|sum_j w[c, j] * g[c, j]|`` (the change in loss when the
  whole channel is removed, to first order)
- ``activation_importance(acts)`` = ``mean |a[:, c, ...]|`` over data rows and positions
"""

from __future__ import annotations

import torch

from presso.errors import PressoError


def _check_same_shape(w: torch.Tensor, grad: torch.Tensor, what: str) -> None:
    if tuple(w.shape) != tuple(grad.shape):
        raise PressoError(
            f"The gradient given to '{what}' has shape {tuple(grad.shape)} but the weight has "
            f"shape {tuple(w.shape)}. Pass the weight's own .grad after a backward pass."
        )


def _channels(w: torch.Tensor) -> torch.Tensor:
    """``w`` as (out, rest): one row per output channel / neuron."""
    if w.dim() < 2:
        raise PressoError(
            f"Channel scores need a weight with at least 2 dimensions (out, in, ...); got shape "
            f"{tuple(w.shape)}. Score a Linear or Conv weight."
        )
    return w.detach().reshape(w.shape[0], -1)  # (out, rest)


def magnitude(w: torch.Tensor) -> torch.Tensor:
    """``|w|``, one score per weight.

    Examples
    --------
    >>> magnitude(torch.tensor([-2.0, 1.0])).tolist()
    [2.0, 1.0]
    """
    return w.detach().abs()


def taylor(w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|w * grad|``: first-order Taylor estimate of the loss change of zeroing each weight.

    Examples
    --------
    >>> taylor(torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])).tolist()
    [1.0, 3.0]
    """
    _check_same_shape(w, grad, "taylor")
    return (w.detach() * grad.detach()).abs()


def random_scores(w: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform random scores in [0, 1) shaped like ``w`` (a baseline), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(w.shape, generator=gen)


def l1_norm(w: torch.Tensor) -> torch.Tensor:
    """Sum of ``|w|`` over each output channel: shape (out,).

    Examples
    --------
    >>> l1_norm(torch.tensor([[1.0, -2.0], [0.5, 0.0]])).tolist()
    [3.0, 0.5]
    """
    return _channels(w).abs().sum(1)


def l2_norm(w: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each output channel: shape (out,)."""
    return _channels(w).norm(dim=1)


def taylor_channel(w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|sum(w * grad)|`` over each output channel: shape (out,).

    Examples
    --------
    >>> taylor_channel(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -2.0]])).tolist()
    [1.0]
    """
    _check_same_shape(w, grad, "taylor_channel")
    return (_channels(w) * _channels(grad)).sum(1).abs()


def activation_importance(acts: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Mean ``|activation|`` of each channel over data rows (and positions): shape (C,).

    ``acts`` is (N, C, ...) (a Linear's output (N, C), a Conv's (N, C, H, W)); for
    channels-last activations such as a transformer's (N, T, C) pass ``axis=-1``.

    Examples
    --------
    >>> activation_importance(torch.tensor([[1.0, -2.0], [3.0, 0.0]])).tolist()
    [2.0, 1.0]
    """
    acts = torch.as_tensor(acts).detach()
    if acts.dim() < 2:
        raise PressoError(
            f"Activations must be (N, C, ...) with one row per data example; got shape "
            f"{tuple(acts.shape)}. Add the batch axis, e.g. acts.unsqueeze(0)."
        )
    a = acts.abs().movedim(axis, 0)  # (C, N, ...)
    return a.reshape(a.shape[0], -1).float().mean(1)
