"""Shared fixtures: isolated caches, small models written as factory files, data files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

FAST_BENCH = ["--rounds", "2", "--batch", "16", "--quiet"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    # Examples train into a per-session cache, never the user's; nothing reaches a hub.
    cache = tmp_path_factory.getbasetemp() / "presso-cache"
    monkeypatch.setenv("PRESSO_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """Torch on one thread: fits compared value for value must sum in one order."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def regression_rows(n=256, seed=0):
    """(train, val) pairs of a small noisy regression: 192 training rows, the rest validation."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (np.tanh(x @ rng.normal(size=(6, 2))) + 0.05 * rng.normal(size=(n, 2))).astype(np.float32)
    return ({"x": x[:192]}, y[:192]), ({"x": x[192:]}, y[192:])


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the presso command in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "presso.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


MLP_FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                     nn.Linear(64, 3))

        def forward(self, features):
            return self.net(features)

    def build():
        torch.manual_seed(0)
        return MLP()
""")


@pytest.fixture
def mlp_project(tmp_path):
    """A factory file, its trained-ish weights and labelled data files (labels = its argmax)."""
    factory = tmp_path / "mlp.py"
    factory.write_text(MLP_FACTORY)
    namespace: dict = {}
    exec(MLP_FACTORY, namespace)
    model = namespace["build"]()
    with torch.no_grad():  # make weights differ from the factory's init, so loading matters
        for p in model.parameters():
            p.mul_(1.5)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    x = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", X=x, y=y)
    return {"dir": tmp_path, "factory": f"{factory}:build", "weights": tmp_path / "mlp.pt",
            "model": model, "x": x, "y": y}


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
