"""Each model source and data source, end to end through `presso compress`."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import FAST_BENCH, read_report, run_cli
from safetensors.torch import save_file

import presso
from presso.measure import BenchSettings
from presso.measure.metrics import evaluate
from presso.recipe.runner import compress


def _plain_ort(path, feed, batch_size: int | None = None):
    """The model's first output in plain onnxruntime, all rows at once or ``batch_size`` at a time
    (dynamic int8 takes each batch's own activation range: outputs depend on the batching)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(next(iter(feed.values())))
    step = batch_size or n
    return np.concatenate(
        [sess.run(None, {k: v[i : i + step] for k, v in feed.items()})[0] for i in range(0, n, step)]
    )


@pytest.mark.int8_kernel
def test_factory_with_pt_weights_cli(mlp_project, tmp_path):
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--weights",
        str(mlp_project["weights"]),
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
        "--json",
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr
    report = read_report(out)
    assert report["task"] == "classification"  # inferred from integer labels and logits
    # Labels are the loaded weights' own predictions: accuracy 1.0 proves --weights was used.
    assert report["baseline"]["metrics"]["accuracy"] == 1.0
    assert report["budget"]["passed"] and report["budget"]["drop"] <= 0.01
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx",
        "recipe.yaml",
        "report.html",
        "report.json",
    ]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features"]  # the forward argument's name


@pytest.mark.int8_kernel
def test_factory_with_safetensors_weights(mlp_project, tmp_path):
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in mlp_project["model"].state_dict().items()}, str(st))
    result = compress(
        mlp_project["factory"],
        data=mlp_project["dir"] / "data.npz",
        weights=st,
        bench=BenchSettings(rounds=1, throughput_batch=8),
    )
    assert result.report.baseline.metrics["accuracy"] == 1.0


@pytest.mark.int8_kernel
def test_module_factory_from_package(tmp_path, monkeypatch, mlp_project):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text((mlp_project["dir"] / "mlp.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    result = compress(
        "userpkg.models:build",
        data=(mlp_project["x"], mlp_project["y"]),
        weights=mlp_project["weights"],
        bench=BenchSettings(rounds=1, throughput_batch=8),
    )
    assert result.report.model["source"] == "factory userpkg.models:build"
    assert result.report.baseline.metrics["accuracy"] == 1.0


@pytest.mark.int8_kernel
def test_nn_module_is_not_mutated_and_outputs_match_report(mlp_project, tmp_path):
    model = mlp_project["model"].train()  # in training mode on purpose
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress(
        model,
        "int8",
        data=(mlp_project["x"], mlp_project["y"]),
        bench=BenchSettings(rounds=1, throughput_batch=8),
    )
    assert model.training, "presso must not switch the user's module to eval mode"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    out = result.save(tmp_path / "art")
    # The artifact runs in plain onnxruntime and reproduces the reported metrics exactly, row by
    # row as presso measures them (whichever int8 variant won: a dynamic one depends on batching).
    from presso.data.dataset import Dataset, split

    parts = split(Dataset(inputs={"features": mlp_project["x"]}, target=mlp_project["y"]), 0.3, 0)
    feed = {"features": parts.evaluation.inputs["features"]}
    got = _plain_ort(out / "model.onnx", feed, batch_size=1)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(parts.evaluation.inputs["features"])).numpy()
    metrics = evaluate("classification", got, ref, parts.evaluation.target)
    assert metrics == pytest.approx(result.report.compressed.metrics, abs=1e-9)
    whole = _plain_ort(out / "model.onnx", feed)  # presso.load's predict runs the rows in one batch too
    assert presso.load(out).predict(feed["features"]) == pytest.approx(whole, abs=1e-6)


@pytest.mark.int8_kernel
def test_onnx_file_source(mlp_project, tmp_path):
    onnx_path = tmp_path / "user.onnx"
    torch.onnx.export(
        mlp_project["model"].eval(),
        (torch.zeros(1, 12),),
        str(onnx_path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        str(onnx_path),
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr
    report = read_report(out)
    assert report["model"]["kind"] == "onnx"
    assert report["compressed"]["size_bytes"] < report["baseline"]["size_bytes"]
    assert report["baseline"]["metrics"]["accuracy"] == 1.0


@pytest.mark.int8_kernel
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_data_with_target(mlp_project, tmp_path, fmt):
    frame = pd.DataFrame(mlp_project["x"], columns=[f"f{i}" for i in range(12)])
    frame.insert(3, "label", mlp_project["y"])  # the target need not be the last column
    path = tmp_path / f"rows.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    out = tmp_path / "art"
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--weights",
        str(mlp_project["weights"]),
        "--data",
        str(path),
        "--target",
        "label",
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr
    report = read_report(out)
    assert report["baseline"]["metrics"]["accuracy"] == 1.0
    assert report["data"]["split"]["evaluation_rows"] == 210


@pytest.mark.int8_kernel
def test_onnx_with_fixed_batch_one_is_measured_at_batch_one(mlp_project, tmp_path):
    onnx_path = tmp_path / "static.onnx"
    torch.onnx.export(
        mlp_project["model"].eval(),
        (torch.zeros(1, 12),),
        str(onnx_path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
    )  # no dynamic axes: batch fixed at 1
    result = compress(
        str(onnx_path),
        data=mlp_project["dir"] / "data.npz",
        max_drop=0.05,
        bench=BenchSettings(rounds=1, throughput_batch=8),
    )
    assert result.report.baseline.throughput_batch == 1
    assert {v["variant"]: v["note"] for v in result.report.stages[0].variants}["static-s8s8"] == ""
    assert result.report.budget.passed


def test_onnx_with_fixed_batch_above_one_is_refused(mlp_project, tmp_path):
    onnx_path = tmp_path / "static4.onnx"
    torch.onnx.export(
        mlp_project["model"].eval(),
        (torch.zeros(4, 12),),
        str(onnx_path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
    )
    done = run_cli(
        "compress",
        str(onnx_path),
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and "fixed batch size" in done.stderr
