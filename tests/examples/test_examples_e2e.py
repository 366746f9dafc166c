"""`presso compress --example NAME --json` for every example, checked against plain onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import FAST_BENCH, run_cli

import presso
from presso.data.dataset import split
from presso.measure.metrics import evaluate
from presso.model import load_model
from presso.report.schema import Report

EXPECTED_METRICS = {
    "digits": {"accuracy", "balanced_accuracy", "top3_accuracy", "f1_macro", "roc_auc", "agreement"},
    "tabular": {"accuracy", "balanced_accuracy", "f1", "roc_auc", "agreement"},
    "forecast": {"mae", "rmse", "mape", "r2", "r2_to_original", "max_abs_diff"},
    "anomaly": {"roc_auc", "average_precision", "r2_to_original"},
    "ranking": {"ndcg@10", "mrr", "map"},
    "minilm": {"mean_cosine", "min_cosine", "top10_agreement"},
}

# The budget's metric and kind per example: balanced classes (digits, tabular's 37% malignant)
# keep accuracy; the forecaster's budget is its MAE's relative increase.
BUDGET = {
    "digits": ("accuracy", "absolute"),
    "tabular": ("accuracy", "absolute"),
    "forecast": ("mae", "relative"),
    "anomaly": ("roc_auc", "absolute"),
    "ranking": ("ndcg@10", "absolute"),
}


def _compress_example(name, tmp_path):
    out = tmp_path / name
    done = run_cli("compress", "--example", name, "--json", "--out", str(out), *FAST_BENCH)
    assert done.returncode == 0, done.stderr[-3000:]
    report = Report.model_validate(json.loads(done.stdout))  # the schema, strictly
    assert json.loads((out / "report.json").read_text()) == json.loads(done.stdout)
    return out, report


def _check_against_plain_ort(name, out, report):
    """model.onnx runs in plain onnxruntime and reproduces the reported metrics."""
    example = presso.load_example(name)
    parts = split(
        example.data, report.recipe["settings"]["calibration_fraction"], report.recipe["settings"]["seed"]
    )
    ev = parts.evaluation
    options = ort.SessionOptions()
    # presso's threads: a float GEMM's sums split across another number of threads round
    # differently, and a near-tie among MiniLM's top-10 neighbours can flip with them
    options.intra_op_num_threads = report.machine["threads"]
    sess = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(ev.inputs)
    assert report.data["split"]["evaluation_batch"] == 1
    mask = ev.inputs.get("attention_mask")

    def row(i: int) -> dict[str, np.ndarray]:
        """Row i as a user feeds it by hand: a text at its own length, no padding."""
        if mask is None:
            return {k: v[i : i + 1] for k, v in ev.inputs.items()}
        n = int(mask[i].sum())
        return {k: v[i : i + 1, :n] for k, v in ev.inputs.items()}

    outputs = np.concatenate([sess.run(None, row(i))[0] for i in range(len(ev))])
    reference = load_model(example.model).run_torch(ev.inputs)
    target = ev.target
    if target is not None and example.task in ("forecast", "regression"):
        target = target.reshape(reference.shape)
    metrics = evaluate(report.task, outputs, reference, target, ev.inputs, ev.groups)
    for key, value in report.compressed.metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key
    return metrics


@pytest.mark.int8_kernel
@pytest.mark.parametrize("name", ["digits", "tabular", "forecast", "anomaly", "ranking"])
def test_example_int8(name, tmp_path):
    out, report = _compress_example(name, tmp_path)
    assert report.task == presso.load_example(name).task
    assert set(report.compressed.metrics) == EXPECTED_METRICS[name]
    b = report.budget
    assert b.passed and b.drop <= b.max_drop == 0.01
    assert b.baseline == report.baseline.metrics[b.primary_metric]
    assert (b.primary_metric, b.kind) == BUDGET[name]
    for key, ch in report.changes.items():  # every metric's change, absolute and relative
        base, comp = report.baseline.metrics[key], report.compressed.metrics[key]
        assert ch.absolute == pytest.approx(comp - base, abs=1e-12)
        if ch.relative is not None:
            assert ch.relative == pytest.approx((comp - base) / abs(base), abs=1e-12)
    if report.baseline.parameters > 5000:
        assert report.compressed.size_bytes < report.baseline.size_bytes
    else:  # a tiny graph may grow: the report must say so rather than hide it
        assert report.compressed.size_bytes < report.baseline.size_bytes or any(
            "NOT smaller" in n for n in report.notes
        )
    assert report.baseline.parameters == report.compressed.parameters > 0
    assert report.compressed.latency_ms.p50 > 0 and report.compressed.throughput_per_s > 0
    assert report.reference["pytorch_fp32_latency_ms"]["p50"] > 0
    assert report.reference["export_max_abs_diff"] < 1e-3
    split_info = report.data["split"]
    assert split_info["calibration_rows"] + split_info["evaluation_rows"] == report.data["rows"]
    assert any("faster" in n for n in report.notes)  # speed verdict, either way, is stated
    _check_against_plain_ort(name, out, report)


@pytest.mark.slow
def test_example_minilm_int8(tmp_path):
    out, report = _compress_example("minilm", tmp_path)
    m = report.compressed.metrics
    # The fidelity bar on held-out sentences (speed is benchmarks/int8_minilm.py's job).
    assert m["mean_cosine"] >= 0.99 and m["min_cosine"] >= 0.97 and m["top10_agreement"] >= 0.9
    assert report.compressed.size_bytes <= 25e6
    assert report.baseline.size_bytes / report.compressed.size_bytes >= 3.5
    assert (out / "tokenizer").is_dir()
    emb = presso.load(out).predict(["A sentence to embed.", "Another one."])
    assert emb.shape == (2, 384) and np.all(np.isfinite(emb))
    _check_against_plain_ort("minilm", out, report)
