"""Artifacts are written atomically: nothing half-written on failure or Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import presso
from presso.measure import BenchSettings


@pytest.fixture(scope="module")
def result():
    ex = presso.load_example("tabular")
    return presso.compress(
        ex.model, "int8", data=ex.data, task=ex.task, bench=BenchSettings(rounds=1, throughput_batch=8)
    )


@pytest.mark.int8_kernel
def test_failed_save_leaves_nothing(result, tmp_path, monkeypatch):
    import presso.report.html as html

    def boom(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(html, "render_html", boom)
    with pytest.raises(KeyboardInterrupt):
        result.save(tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_artifact(result, tmp_path, monkeypatch):
    out = result.save(tmp_path / "art")
    before = (out / "report.json").read_text()
    import presso.report.html as html

    monkeypatch.setattr(html, "render_html", lambda report: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        result.save(out)
    assert (out / "report.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_report_html_is_self_contained(result, tmp_path):
    out = result.save(tmp_path / "art")
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert "Baseline vs compressed" in page and result.report.budget.primary_metric in page


@pytest.mark.int8_kernel
def test_ctrl_c_during_compress(tmp_path):
    out = tmp_path / "art"
    proc = subprocess.Popen(
        [sys.executable, "-m", "presso.cli.main", "compress", "--example", "digits", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts the tests in the background (nohup, CI) ignores SIGINT and its
        # children inherit that; a user's terminal does not: give the run the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    # Wait until real work has started, then interrupt as a user would.
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "stage 1/1" in line or "quantizing" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; nothing was written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.int8_kernel
def test_result_exposes_model_and_predictor(result):
    import numpy as np

    ex = presso.load_example("tabular")
    proto = result.model
    assert [i.name for i in proto.graph.input] == ["x"]
    assert any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in proto.graph.node)
    probs = result.predictor().predict(ex.data.inputs["x"][:5])
    assert probs.shape == (5, 2) and np.all(np.isfinite(probs))
