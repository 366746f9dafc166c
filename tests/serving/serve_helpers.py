"""Helpers of the serving tests, and the ``artifacts`` fixture they import (no conftest.py
here: ``from conftest import`` in the other test folders means the root one). Artifacts to
serve, one per task, built in seconds: small PyTorch modules exported to
ONNX beside a report.json naming the task (what ``presso.load`` reads), and a tiny BERT
with its tokenizer for text. A server serves any artifact; these keep the tests fast."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_tiny import tiny_hf_folder
from torch import nn

from presso.data.sources import from_texts
from presso.export.onnx_export import export_onnx
from presso.model.huggingface import load_hf_folder
from presso.model.sources import load_model

FEATURES = 6
TEXTS = [f"sentence {i} says " + "more and " * (i % 9) + "ends." for i in range(40)]


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class Scorer(nn.Module):
    """One score per row (ranking, regression)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(FEATURES, 1)

    def forward(self, x):
        return self.net(x)


class AutoEncoder(nn.Module):
    """A reconstruction of its input: the anomaly score is the squared error."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 2), nn.Linear(2, FEATURES))

    def forward(self, x):
        return self.net(x)


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * 2 + b.sum(dim=1, keepdim=True)


def write_artifact(folder: Path, module: nn.Module, sample: dict[str, np.ndarray], task: str) -> Path:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    folder.mkdir(parents=True)
    export_onnx(load_model(module.eval()), sample, folder / "model.onnx")
    (folder / "report.json").write_text(json.dumps({"task": task, "model": {"name": type(module).__name__}}))
    return folder


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


@pytest.fixture(scope="module", name="artifacts")
def artifacts_fixture(tmp_path_factory) -> dict[str, Path]:
    """task -> artifact folder."""
    root = tmp_path_factory.mktemp("serve-artifacts")
    x = {"x": rows(4)}
    out = {
        "classification": write_artifact(root / "classifier", Classifier(), x, "classification"),
        "ranking": write_artifact(root / "ranker", Scorer(), x, "ranking"),
        "regression": write_artifact(root / "regressor", Scorer(), x, "regression"),
        "anomaly": write_artifact(root / "autoencoder", AutoEncoder(), x, "anomaly"),
        "two-inputs": write_artifact(
            root / "two", TwoInputs(), {"a": rows(4)[:, :1], "b": rows(4, 1)[:, :3]}, "regression"
        ),
    }
    model = load_hf_folder(tiny_hf_folder("bert", False, root / "bert"))
    text = root / "encoder"
    text.mkdir()
    sample = from_texts(TEXTS[:4], model.input_names, model.tokenizer, 16).inputs
    export_onnx(model, sample, text / "model.onnx")
    model.tokenizer.save_pretrained(str(text / "tokenizer"))
    (text / "report.json").write_text(json.dumps({"task": "embedding", "data": {"max_tokens": 64}}))
    out["embedding"] = text
    return out


class ServerThread:
    """``uvicorn`` serving an app in a thread of this process, on a free port."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_cli_server(*args: str) -> tuple[subprocess.Popen, str]:
    """``presso serve ARGS --port 0`` in a fresh process; returns it and its base URL once
    it announced its port (its /healthz says when it is warm)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "presso", "serve", *args, "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"http://([\d.]+):(\d+)", line)
    if not found:
        proc.kill()
        raise AssertionError(f"no address announced: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, f"http://{found.group(1)}:{found.group(2)}"


def wait_ready(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")
