"""Recurrent layers: what ONNX Runtime cannot run in int8 stays float, and the report says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import presso
from presso.measure import BenchSettings


class GRUForecaster(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(input_size=3, hidden_size=32, batch_first=True)
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, series):
        out, _ = self.gru(series)  # (B, T, 32)
        return self.head(out[:, -1])  # (B, 1)


@pytest.mark.int8_kernel
def test_gru_stays_float_and_is_reported():
    model = GRUForecaster().eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12, 3)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy() + rng.normal(scale=0.01, size=(300, 1)).astype(np.float32)
    result = presso.compress(
        model, "int8", data=(x, y), task="forecast", bench=BenchSettings(rounds=1, throughput_batch=8)
    )
    report = result.report
    assert report.budget.passed
    kept = {layer["op"] for layer in report.stages[0].layers}
    assert "GRU" in kept
    assert any("GRU" in note and "fp32" in note for note in report.notes)
    assert report.compressed.metrics["r2_to_original"] > 0.99
