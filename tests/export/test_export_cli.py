"""The command line on models the TorchScript exporter alone could not handle."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from presso.cli.main import main

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    class EncoderClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2)
            self.head = nn.Linear(32, 3)

        def forward(self, x):  # (B, T, 8)
            return self.head(self.encoder(self.embed(x)).mean(1))

    class RunningMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return torch.cummax(self.proj(x), dim=1).values

    def encoder():
        torch.manual_seed(0)
        return EncoderClassifier()

    def running_max():
        return RunningMax()
""")


def _write(tmp_path):
    (tmp_path / "model.py").write_text(FACTORY)
    namespace: dict = {}
    exec(FACTORY, namespace)
    module = namespace["encoder"]()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    x = np.random.default_rng(0).normal(size=(1200, 10, 8)).astype(np.float32)
    with torch.no_grad():
        logits = module.eval()(torch.from_numpy(x)).numpy()
    # An untrained model has many near ties, which any rounding flips: keep clear rows.
    top2 = np.sort(logits, 1)[:, -2:]
    clear = np.argsort(top2[:, 1] - top2[:, 0])[-400:]
    np.savez(tmp_path / "rows.npz", X=x[clear], y=logits[clear].argmax(1))


@pytest.mark.e2e
def test_compress_transformer_encoder_int8(tmp_path, capsys):
    _write(tmp_path)
    out = tmp_path / "out"
    rc = main(
        [
            "compress",
            f"{tmp_path / 'model.py'}:encoder",
            "--weights",
            str(tmp_path / "w.pt"),
            "--data",
            str(tmp_path / "rows.npz"),
            "--task",
            "classification",
            "--recipe",
            "int8",
            "--out",
            str(out),
            "--rounds",
            "2",
            "--batch",
            "16",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["passed"] and report["budget"]["drop"] <= 0.01
    assert report["reference"]["exporter"] == "dynamo"
    assert report["reference"]["export_max_abs_diff"] < 1e-4


def test_failed_export_one_line_and_debug_log(tmp_path, capsys):
    _write(tmp_path)
    np.savez(tmp_path / "flat.npz", X=np.ones((40, 8), np.float32), y=np.zeros((40, 8)))
    args = ["compress", f"{tmp_path / 'model.py'}:running_max", "--data", str(tmp_path / "flat.npz")]
    args += ["--task", "regression", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "RunningMax" in err and "aten::cummax" in err and "Exporter output: " in err
    with pytest.raises(Exception, match="aten::cummax"):
        main([*args, "--debug"])  # --debug: the traceback, after the exporters' whole output
    out, err = capsys.readouterr()
    assert out == "" and "===== torchscript exporter" in err and "===== dynamo exporter" in err
