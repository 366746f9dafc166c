"""Typed options of recovery by fine-tuning (pydantic only, no torch: recipes validate fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RecoveryOptions(BaseModel):
    """Fine-tuning after a stage changes the model, shared by ``prune``, ``slim`` and ``factorize``.

    The model is fitted to the original model's outputs on the calibration rows
    (``targets: teacher``) or to the data's labels (``targets: labels``); a seeded
    ``validation_fraction`` of them is held back for early stopping. ``augment`` adds that
    many copies of the training rows as mixup rows labelled by the original model (float
    inputs, teacher targets only). ``l1`` and ``group_lasso`` add those penalties on the
    Linear / Conv weights to the training loss (regularisers toward sparsity).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: 60 epochs at lr 1e-3, or for transformer encoders 4 epochs at 2e-4 (an epoch of
    # MiniLM on 192 sentences takes 30-60 s on 2 cores; its FFN-halved cosine rose every
    # epoch at 2e-4, to 0.879 after 4; 1e-3 is far too large for a pretrained transformer)
    epochs: int | None = Field(default=None, ge=0, le=1000)  # 0: prune without fine-tuning
    lr: float | None = Field(default=None, gt=0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=65536)
    patience: int | None = Field(default=None, ge=1)  # after the last sparsity step
    temperature: float = Field(default=2.0, gt=0, le=100)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_minutes: float | None = Field(default=None, gt=0)
    targets: Literal["teacher", "labels"] = "teacher"
    augment: int = Field(default=8, ge=0, le=64)  # digits slim 0.65: 0.6-0.8 points lost with 8 (60 epochs)
    l1: float = Field(default=0.0, ge=0, le=100)
    group_lasso: float = Field(default=0.0, ge=0, le=100)
    backoff: int = Field(
        default=2, ge=0, le=8
    )  # milder retries (half the pruned fraction) if the budget breaks
