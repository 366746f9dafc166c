"""The ``ranking`` example: an MLP scoring travel modes on statsmodels' ``modechoice`` data.

210 travellers between Sydney and Melbourne each chose one of four modes (air, train, bus,
car). A traveller is a query; each mode is one row with its terminal waiting time (ttme),
in-vehicle cost (invc) and time (invt), generalised cost (gc), the traveller's household
income (hinc) and party size (psize), and the mode one-hot. The relevance is 1 for the
chosen mode. The model scores each row alone; it is trained with a listwise softmax loss
over each traveller's four modes, so the chosen mode should score highest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from presso.data.dataset import Dataset
from presso.examples._cache import cached_model, train_supervised
from presso.examples.registry import Example
from presso.measure.metrics import evaluate
from presso.model.layers import Standardize

NAME = "ranking"
VERSION = 1  # bump when the model, data or training below changes
SEED = 0
HELDOUT_FRACTION = 0.4  # of the travellers: 84 of 210 (336 rows)
EPOCHS = 60
LR = 3e-3
BATCH_SIZE = 16  # travellers per step
MODES = ("air", "train", "bus", "car")
NUMERIC = ("ttme", "invc", "invt", "gc", "hinc", "psize")
FEATURES = [*NUMERIC, *(f"mode_{m}" for m in MODES)]


class ModeScorer(nn.Module):
    """(N, 10) features of one travel mode -> (N, 1) score; higher: more likely chosen."""

    def __init__(self, standardize: Standardize | None = None) -> None:
        super().__init__()
        self.standardize = standardize if standardize is not None else Standardize(len(FEATURES))
        self.net = nn.Sequential(
            nn.Linear(len(FEATURES), 32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.ReLU(),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))  # (..., 1): also scores (B, 4, 10) travellers


def _rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X (840, 10), choice (840,), traveller id (840,)), four rows per traveller in mode order."""
    from statsmodels.datasets import modechoice

    frame = modechoice.load_pandas().data.sort_values(["individual", "mode"])
    one_hot = np.eye(len(MODES), dtype=np.float32)[frame["mode"].to_numpy().astype(int) - 1]
    X = np.concatenate([frame[list(NUMERIC)].to_numpy(np.float32), one_hot], axis=1)
    return X, frame["choice"].to_numpy(np.float32), frame["individual"].to_numpy().astype(np.int64)


def _travellers(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out traveller ids: a seeded split of whole travellers."""
    ids = np.unique(groups)
    order = np.random.default_rng(SEED).permutation(ids)
    n_heldout = round(len(ids) * HELDOUT_FRACTION)
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def _listwise_loss(scores: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each traveller's modes: (B, 4, 1) scores, (B,) chosen index."""
    return nn.functional.cross_entropy(scores.squeeze(-1), chosen)


def _metrics(model: nn.Module, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        scores = model(torch.from_numpy(X)).numpy()
    return evaluate("ranking", scores, scores, y, None, groups)


def build(progress: Callable[[str], None] | None = None) -> Example:
    X, y, groups = _rows()
    train_ids, heldout_ids = _travellers(groups)
    train, heldout = np.isin(groups, train_ids), np.isin(groups, heldout_ids)
    X_tr = torch.from_numpy(X[train]).reshape(-1, len(MODES), len(FEATURES))  # (T, 4, 10)
    chosen = torch.from_numpy(y[train].reshape(-1, len(MODES)).argmax(axis=1))  # (T,)

    model, trained = cached_model(
        NAME,
        VERSION,
        SEED,
        lambda fitting: ModeScorer(Standardize.fit(X_tr.reshape(-1, len(FEATURES))) if fitting else None),
        lambda m: train_supervised(m, X_tr, chosen, _listwise_loss, EPOCHS, LR, BATCH_SIZE, SEED),
        progress,
    )
    return Example(
        name=NAME,
        model=model,
        data=Dataset(
            inputs={"x": X[heldout]},
            target=y[heldout],
            source=f"statsmodels modechoice (held-out travellers: {len(heldout_ids)} of {len(train_ids) + len(heldout_ids)})",
            feature_names=FEATURES,
            groups=groups[heldout],
        ),
        task="ranking",
        description="MLP 10-32-32-1 scoring travel modes on statsmodels' modechoice: input 'x' is "
        "(N, 10) features of one mode (standardised inside the model), output (N, 1) its score; "
        "rows are grouped by traveller, relevance 1 for the chosen mode.",
        training={
            "train_travellers": len(train_ids),
            "heldout_travellers": len(heldout_ids),
            "split": f"seeded, {HELDOUT_FRACTION:.0%} of travellers held out (all four modes each), seed {SEED}",
            "loss": "listwise softmax cross-entropy over each traveller's four modes",
            "epochs": EPOCHS,
            "optimizer": f"Adam lr={LR}, batch {BATCH_SIZE} travellers",
            "train": _metrics(model, X[train], y[train], groups[train]),
            "heldout": _metrics(model, X[heldout], y[heldout], groups[heldout]),
            "from_cache": not trained,
        },
    )
