"""Shared plumbing of the built-in examples: the weight cache and one training loop.

Trained weights live in ``<user cache dir>/presso/examples/{name}-v{version}.pt``
(``PRESSO_CACHE_DIR`` replaces ``<user cache dir>/presso``). Bump an example's
``version`` whenever its model, data or training changes so stale weights are never
loaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from presso.cache import CACHE_ENV, cache_root
from presso.model.layers import seeded
from presso.train.checkpoint import save_atomic

M = TypeVar("M", bound=nn.Module)


def cache_dir() -> Path:
    """The folder holding the examples' trained weights (not created here)."""
    return cache_root() / "examples"


def _load(path: Path) -> dict | None:
    """The state dict at ``path``, or ``None`` when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply retrained
        return None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return None
    return state


def cached_state_dict(name: str, version: int, train_fn: Callable[[], dict]) -> tuple[dict, bool]:
    """Load the example's weights from the cache, or train and cache them.

    Returns ``(state_dict, was_trained)``. A corrupt or foreign cache file is
    retrained and overwritten; a cache folder that cannot be written only warns.
    """
    path = cache_dir() / f"{name}-v{version}.pt"
    state = _load(path)
    if state is not None:
        return state, False
    state = {k: v.detach().cpu().clone() for k, v in train_fn().items()}
    try:
        save_atomic(state, path)
    except OSError as exc:
        warnings.warn(
            f"Could not cache the trained '{name}' example weights at {path} ({exc}); "
            f"they will be retrained next time. Set {CACHE_ENV} to a writable folder.",
            stacklevel=2,
        )
    return state, True


def train_supervised(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Fit ``model`` to ``(X, y)`` with Adam and seeded mini-batch shuffling.

    Trains on one thread: these models are tiny, so one thread is as fast on an idle
    machine, far faster on a busy one (measured: 5 s vs 23-63 s for digits), and makes
    the weights identical on every machine (float sums depend on the thread count).
    The model's parameters should be created under :func:`seeded` so their initial
    values are reproducible too. Returns the mean loss of each epoch; the model is
    left in eval mode.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, X, y, loss_fn, epochs, lr, batch_size, seed)
    finally:
        torch.set_num_threads(threads)


def _train(model, X, y, loss_fn, epochs, lr, batch_size, seed) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(X)
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    model.eval()
    return history


def cached_model(
    name: str,
    version: int,
    seed: int,
    build: Callable[[bool], M],
    fit: Callable[[M], object],
    progress: Callable[[str], None] | None = None,
) -> tuple[M, bool]:
    """An example's trained model: from the cache, or built, fitted and cached now.

    ``build(fitting)`` makes the module (under ``seed``; ``fitting`` is True when it will
    be trained, so train-row statistics can be computed) and ``fit(model)`` trains it.
    Returns the model in eval mode and whether it was trained now.
    """

    def train() -> dict:
        if progress is not None:
            progress(f"training the {name} example model (first use only)")
        with seeded(seed):
            model = build(True)
        fit(model)
        return model.state_dict()

    state, trained = cached_state_dict(name, version, train)
    with seeded(seed):  # keep the caller's RNG untouched by the skeleton's init
        model = build(False)
    model.load_state_dict(state)
    return model.eval(), trained
