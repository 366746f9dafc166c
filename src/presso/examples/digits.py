"""The ``digits`` example: a small CNN on scikit-learn's 8x8 handwritten digits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from presso.data.dataset import Dataset
from presso.examples._cache import cached_model, train_supervised
from presso.examples.registry import Example

NAME = "digits"
VERSION = 1  # bump when the model, data or training below changes
SEED = 0
HELDOUT_FRACTION = 0.4  # 719 of 1797 rows
EPOCHS = 30
LR = 1e-3
BATCH_SIZE = 64


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) pixels in [0, 1] -> (N, 10) class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),  # (N, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),  # (N, 32, 8, 8)
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = digits.target.astype(np.int64)
    return train_test_split(X, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SEED)


def _accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def build(progress: Callable[[str], None] | None = None) -> Example:
    X_tr, X_ho, y_tr, y_ho = _split()

    model, trained = cached_model(
        NAME,
        VERSION,
        SEED,
        lambda fitting: DigitsCNN(),
        lambda m: train_supervised(
            m,
            torch.from_numpy(X_tr),
            torch.from_numpy(y_tr),
            nn.functional.cross_entropy,
            EPOCHS,
            LR,
            BATCH_SIZE,
            SEED,
        ),
        progress,
    )
    return Example(
        name=NAME,
        model=model,
        data=Dataset(inputs={"x": X_ho}, target=y_ho, source="scikit-learn load_digits (held-out rows)"),
        task="classification",
        description="CNN on scikit-learn's 8x8 handwritten digits: input 'x' is "
        "(N, 1, 8, 8) pixels scaled to [0, 1], output (N, 10) logits.",
        training={
            "train_rows": len(X_tr),
            "heldout_rows": len(X_ho),
            "split": f"stratified, {HELDOUT_FRACTION:.0%} held out, seed {SEED}",
            "epochs": EPOCHS,
            "optimizer": f"Adam lr={LR}, batch {BATCH_SIZE}",
            "train_accuracy": _accuracy(model, X_tr, y_tr),
            "heldout_accuracy": _accuracy(model, X_ho, y_ho),
            "from_cache": not trained,
        },
    )
