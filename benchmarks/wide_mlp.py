"""A 1024-wide MLP on scikit-learn's digits: the model whose dense layers are wide enough
for low-rank factors to run faster at batch 1 (the small examples' 64-wide layers are not).

``python -c "import presso; ..."`` users can load it as a factory: ``benchmarks/wide_mlp.py:build``
(trained on the digits rows the example holds out from presso, seeded, about 20 s on 2 cores).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

WIDTH = 1024


class WideMLP(nn.Module):
    """(N, 1, 8, 8) pixels -> 64 -> width -> width -> width -> 10 logits."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def digits_split():
    """The digits example's own split: (train images, train labels), held-out Dataset."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from presso.data.dataset import Dataset
    from presso.examples.digits import HELDOUT_FRACTION, SEED

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    X_tr, X_ho, y_tr, y_ho = train_test_split(X, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SEED)
    return (X_tr, y_tr), Dataset(
        inputs={"x": X_ho}, target=y_ho, source="scikit-learn load_digits (held-out rows)"
    )


def build(seed: int = 0, epochs: int = 30) -> nn.Module:
    from presso.examples._cache import train_supervised

    torch.manual_seed(seed)
    (X_tr, y_tr), _ = digits_split()
    model = WideMLP()
    train_supervised(
        model,
        torch.from_numpy(X_tr),
        torch.from_numpy(y_tr),
        nn.functional.cross_entropy,
        epochs,
        1e-3,
        64,
        seed,
    )
    return model.eval()
