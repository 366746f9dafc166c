"""Small layers presso's own models are built from (examples, derived students)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class Standardize(nn.Module):
    """Fixed ``(x - mean) / std`` with train-row statistics kept as buffers."""

    # Buffers registered in __init__ (nn.Module.__getattr__ alone types them Tensor | Module).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    @classmethod
    def fit(cls, X: torch.Tensor) -> Standardize:
        """A layer whose statistics come from the rows of ``X`` (N, F)."""
        layer = cls(X.shape[1])
        layer.mean.copy_(X.mean(dim=0))
        layer.std.copy_(X.std(dim=0).clamp_min(1e-6))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block (a model's initial weights), restoring the
    caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
