"""Zoo models through the CLI as users give them: ``file.py:factory --weights w.pt --data rows.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_BENCH, read_report, run_cli
from zoo.models import ZOO

TESTS = Path(__file__).resolve().parents[1]

FACTORY = """
import sys
sys.path.insert(0, {tests!r})
from zoo import architectures

def build():
    return architectures.{cls}({args})
"""


def _project(tmp_path: Path, name: str, cls: str, args: str):
    """The zoo entry's trained weights, its rows as .npz (one array per input, plus y) and a
    factory file that builds the same architecture."""
    case = ZOO[name].make(tmp_path)
    factory = tmp_path / "model.py"
    factory.write_text(FACTORY.format(tests=str(TESTS), cls=cls, args=args))
    torch.save(case.model.state_dict(), tmp_path / "w.pt")
    np.savez(tmp_path / "rows.npz", **case.data)
    return case, f"{factory}:build"


@pytest.mark.e2e
@pytest.mark.int8_kernel
@pytest.mark.parametrize(
    ("name", "cls", "args"),
    [("mlp-batchnorm", "MLPBatchNorm", "30, 2"), ("recommender", "Recommender", "50, 80, 4")],
)
def test_cli_compresses_a_zoo_factory(tmp_path, name, cls, args):
    case, factory = _project(tmp_path, name, cls, args)
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        factory,
        "--weights",
        str(tmp_path / "w.pt"),
        "--data",
        str(tmp_path / "rows.npz"),
        "--task",
        case.task,
        "--max-drop",
        str(case.max_drop),
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = read_report(out)
    assert [i["name"] for i in report["inputs"]] == [k for k in case.data if k != "y"]
    assert report["budget"]["passed"] and report["budget"]["drop"] <= case.max_drop
    assert report["reference"]["export_max_abs_diff"] < 1e-3
    assert report["ratios"]["size"] > 1.1  # int8 weights of the layers the budget lets go


@pytest.mark.e2e
def test_cli_refuses_data_dependent_control_flow_in_one_line(tmp_path):
    _, factory = _project(tmp_path, "control-flow", "DataDependent", "")
    done = run_cli(
        "compress",
        factory,
        "--weights",
        str(tmp_path / "w.pt"),
        "--data",
        str(tmp_path / "rows.npz"),
        "--task",
        "regression",
        "--out",
        str(tmp_path / "art"),
        *FAST_BENCH,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "ONNX outputs differ from PyTorch" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "art").exists()
