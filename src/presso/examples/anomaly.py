"""The ``anomaly`` example: an autoencoder on benign breast-cancer rows.

Trained to reconstruct benign rows only, so malignant rows (the anomalies) get a
larger reconstruction error. The exported model returns that error as the score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from presso.data.dataset import Dataset
from presso.examples._cache import cached_model, train_supervised
from presso.examples.registry import Example
from presso.model.layers import Standardize

NAME = "anomaly"
VERSION = 1  # bump when the model, data or training below changes
SEED = 0
TRAIN_FRACTION = 0.7  # of the benign rows; no malignant row is ever trained on
EPOCHS = 200
LR = 1e-3
BATCH_SIZE = 32
N_FEATURES = 30


class AnomalyScorer(nn.Module):
    """(N, 30) raw features -> (N,) anomaly score.

    The score is the mean squared reconstruction error of a 30-16-8-16-30
    autoencoder, measured in standardised space (train-row mean and std as buffers).
    """

    def __init__(self, standardize: Standardize | None = None) -> None:
        super().__init__()
        self.standardize = standardize if standardize is not None else Standardize(N_FEATURES)
        self.autoencoder = nn.Sequential(
            nn.Linear(N_FEATURES, 16),
            nn.ReLU(),
            nn.Linear(16, 8),
            nn.ReLU(),
            nn.Linear(8, 16),
            nn.ReLU(),
            nn.Linear(16, N_FEATURES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardize(x)  # (N, 30)
        return ((self.autoencoder(z) - z) ** 2).mean(dim=1)  # (N,)


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Benign training rows, and held-out rows with target 1 = malignant (anomaly)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bc = load_breast_cancer()
    X = bc.data.astype(np.float32)  # (N, 30)
    benign = bc.target == 1  # scikit-learn: 0 = malignant, 1 = benign
    X_train, X_benign_ho = train_test_split(X[benign], train_size=TRAIN_FRACTION, random_state=SEED)
    X_ho = np.concatenate([X_benign_ho, X[~benign]])
    y_ho = np.concatenate([np.zeros(len(X_benign_ho)), np.ones(int((~benign).sum()))])
    return X_train, X_ho, y_ho.astype(np.int64), list(bc.feature_names)


def _roc_auc(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        score = model(torch.from_numpy(X)).numpy()
    return float(roc_auc_score(y, score))


def build(progress: Callable[[str], None] | None = None) -> Example:
    X_tr, X_ho, y_ho, feature_names = _split()

    X = torch.from_numpy(X_tr)

    def fit(model: AnomalyScorer) -> None:
        Z = model.standardize(X)  # the autoencoder learns to reproduce standardised rows
        train_supervised(model.autoencoder, Z, Z, nn.functional.mse_loss, EPOCHS, LR, BATCH_SIZE, SEED)

    model, trained = cached_model(
        NAME,
        VERSION,
        SEED,
        lambda fitting: AnomalyScorer(Standardize.fit(X) if fitting else None),
        fit,
        progress,
    )
    with torch.no_grad():
        train_error = float(model(torch.from_numpy(X_tr)).mean())
    return Example(
        name=NAME,
        model=model,
        data=Dataset(
            inputs={"x": X_ho},
            target=y_ho,
            source="scikit-learn load_breast_cancer (held-out benign rows and all malignant rows)",
            feature_names=feature_names,
        ),
        task="anomaly",
        description="autoencoder 30-16-8-16-30 trained on benign breast-cancer rows: "
        "input 'x' is (N, 30) raw features, output (N,) anomaly score "
        "(mean squared reconstruction error); target 1 = malignant.",
        training={
            "train_rows": len(X_tr),
            "heldout_rows": len(X_ho),
            "heldout_anomalies": int(y_ho.sum()),
            "split": f"{TRAIN_FRACTION:.0%} of benign rows train (seed {SEED}); "
            "held out: the other benign rows and every malignant row",
            "epochs": EPOCHS,
            "optimizer": f"Adam lr={LR}, batch {BATCH_SIZE}",
            "train_reconstruction_mse": train_error,
            "heldout_roc_auc": _roc_auc(model, X_ho, y_ho),
            "from_cache": not trained,
        },
    )
