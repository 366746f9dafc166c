"""Name -> builder of the built-in examples.

Each builder returns an :class:`Example`: a trained ``nn.Module`` and the *held-out*
rows it was not trained on (presso splits those again into calibration and
evaluation). Trained weights are cached under the user cache dir, keyed by the
example's version, so only the first use trains.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from presso.data.dataset import Dataset
from presso.errors import PressoError


@dataclass
class Example:
    name: str
    model: nn.Module | Any  # a torch module, or a LoadedModel for the Hugging Face example
    data: Dataset
    task: str
    description: str
    training: dict = field(default_factory=dict)  # how the model was trained, for the report

    @property
    def train_texts(self) -> Path | None:
        """A file of extra training texts (one per line) a student distils on by default, or
        None; built on first use (the minilm corpus: about two minutes, then cached)."""
        return None if self.data.train_texts is None else self.data.train_texts()


# Explicit registry (no import-time magic): name -> (module, one-line description).
EXAMPLES: dict[str, tuple[str, str]] = {
    "digits": (
        "presso.examples.digits",
        "CNN on scikit-learn's 8x8 handwritten digits (accuracy, top-3)",
    ),
    "tabular": (
        "presso.examples.tabular",
        "MLP on scikit-learn's breast-cancer rows (accuracy, F1, ROC-AUC)",
    ),
    "forecast": (
        "presso.examples.forecast",
        "MLP forecaster on statsmodels' weekly Mauna Loa CO2 (MAE, RMSE, MAPE)",
    ),
    "anomaly": (
        "presso.examples.anomaly",
        "autoencoder on benign breast-cancer rows; malignant rows are anomalies (ROC-AUC, average precision)",
    ),
    "ranking": (
        "presso.examples.ranking",
        "MLP scoring travel modes per traveller on statsmodels' modechoice (NDCG@10, MRR, MAP)",
    ),
    "minilm": (
        "presso.examples.minilm",
        "pretrained all-MiniLM-L6-v2 sentence encoder, offline (cosine, top-10 agreement)",
    ),
}


def load_example(name: str, progress: Callable[[str], None] | None = None) -> Example:
    """Build (training on first use) the built-in example ``name``."""
    if name not in EXAMPLES:
        raise PressoError(f"Unknown example '{name}'. Choose one of: {', '.join(EXAMPLES)}.")
    module = importlib.import_module(EXAMPLES[name][0])
    return module.build(progress=progress)
