"""The qat recipe stage: fine-tuned with fake-quantized weights, stored losslessly in 4 bits."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import presso
from presso.errors import PressoError
from presso.measure import BenchSettings
from presso.recipe.schema import Recipe, Stage
from presso.techniques.quantization.config import Int4Config
from presso.techniques.quantization.qat import convert, prepare_qat
from presso.techniques.quantization.qat_stage import grids_by_initializer
from presso.techniques.quantization.weight_only import write_int4

QUICK = BenchSettings(rounds=1, throughput_batch=8)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()


def test_trained_grid_is_stored_losslessly(tmp_path):
    model = _net()
    prepare_qat(model, bits=4, learned_scale=True)
    with torch.no_grad():  # learned scales away from min-max: recomputing them would differ
        for p in model.parameters():
            if p.ndim == 2 and p.shape[-1] <= 8:
                p.mul_(0.8)
    qparams = convert(model)
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )
    grids = grids_by_initializer(path, model, qparams)
    assert len(grids) == 3  # conv, both linears: matched by value despite renames/transposes
    x = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()

    def run(grids_):
        write_int4(path, tmp_path / "q.onnx", Int4Config(), {}, grids_)
        sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
        return np.abs(sess.run(None, {"x": x})[0] - ref).max()

    assert run(grids) < 1e-5  # the stored integers x scales are the trained weights
    assert run({}) > 1e-3  # min-max re-quantization of the same weights would change them


def test_digits_qat_beats_int4_within_a_point_and_six_times_smaller():
    ex = presso.load_example("digits")
    qat = presso.compress(ex.model, "qat", data=ex.data, task=ex.task, bench=QUICK).report
    int4 = presso.compress(ex.model, "int4", data=ex.data, task=ex.task, bench=QUICK).report
    assert qat.budget.passed and qat.budget.drop <= 0.01
    assert qat.compressed.metrics["accuracy"] >= int4.compressed.metrics["accuracy"]
    assert qat.baseline.size_bytes / qat.compressed.size_bytes >= 6.0
    assert all(row["precision"] == "int4" for row in qat.stages[0].layers)
    assert any("with their trained scales" in note for note in qat.stages[0].notes)


def test_progressive_3_bit_qat_runs_every_stage_and_meets_the_budget():
    ex = presso.load_example("digits")
    options = {"progressive_stages": 2, "epochs": 4, "bits": 3}
    recipe = Recipe(name="p", stages=[Stage(technique="qat", options=options)])
    report = presso.compress(ex.model, recipe, data=ex.data, task=ex.task, bench=QUICK).report
    assert report.budget.passed
    note = next(n for n in report.stages[0].notes if n.startswith("qat: fine-tuned"))
    assert "for 4 epochs" in note  # no early stop before the last group started quantizing
    assert "4 of 4 layers stored with their trained scales" in note
    assert {row["precision"] for row in report.stages[0].layers} <= {"int3", "int8"}


def test_qat_must_precede_onnx_stages():
    recipe = Recipe(name="r", stages=[Stage(technique="int8"), Stage(technique="qat")])
    ex = presso.load_example("digits")
    with pytest.raises(
        PressoError, match="stage 2 'qat' trains the PyTorch model, so it must come before stage 1"
    ):
        presso.compress(copy.deepcopy(ex.model), recipe, data=ex.data, task=ex.task, bench=QUICK)


def test_qat_needs_a_pytorch_model(tmp_path):
    model = _net()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )
    x = np.random.default_rng(0).random((50, 1, 8, 8), dtype=np.float32)
    with pytest.raises(PressoError, match="needs a PyTorch model"):
        presso.compress(str(path), "qat", data=x, task="classification", bench=QUICK)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"bits": 0}, "option 'bits'"),
        ({"bits": 9}, "option 'bits'"),
        ({"epochs": 0}, "option 'epochs'"),
        ({"lr": -1}, "option 'lr'"),
        ({"optimizer": "sgd"}, "unknown option 'optimizer'"),
    ],
)
def test_bad_qat_options(bad, message):
    with pytest.raises(PressoError, match=f"stage 1 'qat': {message}"):
        Recipe(name="r", stages=[Stage(technique="qat", options=bad)]).configs()
