"""The ``tabular`` example: an MLP on scikit-learn's breast-cancer rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from presso.data.dataset import Dataset
from presso.examples._cache import cached_model, train_supervised
from presso.examples.registry import Example
from presso.model.layers import Standardize

NAME = "tabular"
VERSION = 1  # bump when the model, data or training below changes
SEED = 0
HELDOUT_FRACTION = 0.4  # 228 of 569 rows
EPOCHS = 60
LR = 1e-3
BATCH_SIZE = 32
N_FEATURES = 30


class TabularMLP(nn.Module):
    """(N, 30) raw features -> (N, 2) logits; class 1 is benign, as in scikit-learn."""

    def __init__(self, standardize: Standardize | None = None) -> None:
        super().__init__()
        self.standardize = standardize if standardize is not None else Standardize(N_FEATURES)
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bc = load_breast_cancer()
    X = bc.data.astype(np.float32)  # (N, 30)
    y = bc.target.astype(np.int64)
    parts = train_test_split(X, y, test_size=HELDOUT_FRACTION, stratify=y, random_state=SEED)
    return (*parts, list(bc.feature_names))


def _accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def build(progress: Callable[[str], None] | None = None) -> Example:
    X_tr, X_ho, y_tr, y_ho, feature_names = _split()

    X = torch.from_numpy(X_tr)
    model, trained = cached_model(
        NAME,
        VERSION,
        SEED,
        lambda fitting: TabularMLP(Standardize.fit(X) if fitting else None),
        lambda m: train_supervised(
            m, X, torch.from_numpy(y_tr), nn.functional.cross_entropy, EPOCHS, LR, BATCH_SIZE, SEED
        ),
        progress,
    )
    return Example(
        name=NAME,
        model=model,
        data=Dataset(
            inputs={"x": X_ho},
            target=y_ho,
            source="scikit-learn load_breast_cancer (held-out rows)",
            feature_names=feature_names,
        ),
        task="classification",
        description="MLP 30-64-64-2 on scikit-learn's breast-cancer rows: input 'x' is "
        "(N, 30) raw features (standardised inside the model), output (N, 2) "
        "logits, class 1 = benign.",
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
