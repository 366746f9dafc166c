"""The ``forecast`` example: an MLP forecaster on statsmodels' weekly Mauna Loa CO2.

Each row is the past 52 weeks of CO2 in ppm; the target is the next week's value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from presso.data.dataset import Dataset
from presso.examples._cache import cached_model, train_supervised
from presso.examples.registry import Example

if TYPE_CHECKING:
    import pandas as pd

NAME = "forecast"
VERSION = 1  # bump when the model, data or training below changes
SEED = 0
WINDOW = 52  # weeks of history per row
TRAIN_FRACTION = 0.75  # the first 75% of windows (in time) train, the rest are held out
SCALE_PPM = 5.0  # fixed scale of the level-free window, about the seasonal swing
EPOCHS = 40
LR = 1e-3
BATCH_SIZE = 64


class CO2Forecaster(nn.Module):
    """(N, 52) past weekly CO2 in ppm -> (N, 1) next week's CO2 in ppm.

    The window is made level-free inside the model (minus its last value, divided by
    a fixed scale) so the network only learns the seasonal shape and trend slope,
    and keeps working as the level rises beyond what it saw in training.
    """

    scale: torch.Tensor  # a buffer, registered in __init__

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(SCALE_PPM))
        self.net = nn.Sequential(
            nn.Linear(WINDOW, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1:]  # (N, 1)
        delta = self.net((x - last) / self.scale)  # (N, 1), in units of scale
        return last + delta * self.scale


def _windows() -> tuple[np.ndarray, np.ndarray, np.ndarray, int, pd.DatetimeIndex]:
    """All windows in time order: inputs, targets, target week numbers, the number
    of training windows, and the weekly date index."""
    from statsmodels.datasets import co2

    series = co2.load_pandas().data["co2"]  # weekly (W-SAT), 1958-03-29 .. 2001-12-29
    observed = series.notna().to_numpy()
    # 59 of the 2284 weeks are missing (the longest gap is 16 weeks in 1964). They are
    # filled by interpolation linear in time so every window is complete, but windows
    # whose *target* week was missing are dropped: the model is never trained or
    # scored on an invented value.
    values = series.interpolate(method="time").to_numpy(np.float32)
    start = np.arange(len(values) - WINDOW)
    start = start[observed[start + WINDOW]]
    X = np.stack([values[i : i + WINDOW] for i in start])  # (W, 52)
    target_week = start + WINDOW  # (W,)
    y = values[target_week][:, None]  # (W, 1)
    return X, y, target_week, int(len(X) * TRAIN_FRACTION), series.index


def _mae(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).numpy()
    return float(np.abs(pred - y).mean())


def build(progress: Callable[[str], None] | None = None) -> Example:
    X, y, target_week, n_train, dates = _windows()
    X_tr, X_ho, y_tr, y_ho = X[:n_train], X[n_train:], y[:n_train], y[n_train:]
    heldout_dates = dates[target_week[n_train:]]
    span = f"{heldout_dates[0]:%Y-%m-%d} .. {heldout_dates[-1]:%Y-%m-%d}"

    model, trained = cached_model(
        NAME,
        VERSION,
        SEED,
        lambda fitting: CO2Forecaster(),
        lambda m: train_supervised(
            m,
            torch.from_numpy(X_tr),
            torch.from_numpy(y_tr),
            nn.functional.mse_loss,
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
        data=Dataset(
            inputs={"x": X_ho},
            target=y_ho,
            source=f"statsmodels co2, weekly Mauna Loa (held-out weeks {span})",
            feature_names=[f"t-{WINDOW - i}" for i in range(WINDOW)],
        ),
        task="forecast",
        description="MLP forecaster on statsmodels' weekly Mauna Loa CO2: input 'x' is "
        "(N, 52) past weeks in ppm, output (N, 1) next week in ppm.",
        training={
            "train_rows": len(X_tr),
            "heldout_rows": len(X_ho),
            "split": f"chronological: first {TRAIN_FRACTION:.0%} of windows train, "
            f"held-out targets are the weeks {span}",
            "missing_weeks": "interpolated in time inside windows; windows with a "
            "missing target week dropped",
            "epochs": EPOCHS,
            "optimizer": f"Adam lr={LR}, batch {BATCH_SIZE}",
            "train_mae_ppm": _mae(model, X_tr, y_tr),
            "heldout_mae_ppm": _mae(model, X_ho, y_ho),
            "persistence_mae_ppm": float(np.abs(X_ho[:, -1:] - y_ho).mean()),
            "from_cache": not trained,
        },
    )
