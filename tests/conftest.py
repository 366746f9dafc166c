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


def pytest_terminal_summary(terminalreporter):
    """The generated cases each robustness surface tried (tests/robustness/fuzz_cases.py)."""
    cases = sys.modules.get("fuzz_cases")
    if cases is not None and cases.tried:
        terminalreporter.section("generated cases tried, by surface")
        for surface, n in sorted(cases.tried.items()):
            terminalreporter.write_line(f"{surface}: {n}")


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
    return subprocess.run(
        [sys.executable, "-m", "presso.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


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


def decided_rows(model: torch.nn.Module, n: int, features: int = 12, margin: float = 0.1, seed: int = 0):
    """``n`` rows of standard normal features whose two best logits differ by at least
    ``margin``, labelled with the model's own class, (x, y).

    The logits of the MLP below spread by ~0.3. Where ONNX Runtime sums int8 products
    exactly (VNNI), int8 moves them by at most ~0.016 and no row with a 0.1 margin changes
    class. Where it saturates pairs of products (AVX2 without VNNI) some variants move them
    far more (static s8s8 changes 1 of 90 such calibration rows on an emulated CPU, random
    rows 1 of 90 with every variant) and presso's accuracy-aware choice takes one that does
    not saturate. With random rows a 0.01 budget on 90 calibration rows hinges on whether one
    borderline row changes class on the CPU at hand: tests of model and data sources must not.
    """
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        x = rng.normal(size=(4 * n, features)).astype(np.float32)
        with torch.no_grad():
            top2 = torch.topk(model(torch.from_numpy(x)), 2, dim=1).values.numpy()
        kept.append(x[top2[:, 0] - top2[:, 1] >= margin])
    x = np.concatenate(kept)[:n]
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).argmax(1).numpy()


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
    x, y = decided_rows(model, 300)
    np.savez(tmp_path / "data.npz", X=x, y=y)
    return {
        "dir": tmp_path,
        "factory": f"{factory}:build",
        "weights": tmp_path / "mlp.pt",
        "model": model,
        "x": x,
        "y": y,
    }


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())
