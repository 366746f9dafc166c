"""4-bit weight-only quantization: exact against presso's quantizer, really packed, budgeted."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import presso
from presso.errors import PressoError
from presso.measure import BenchSettings
from presso.techniques.quantization.config import Int4Config
from presso.techniques.quantization.quantizers import fake_quantize
from presso.techniques.quantization.weight_only import write_int4


@pytest.fixture
def cnn(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )
    return model, path


@pytest.mark.parametrize("symmetric", [True, False])
def test_runtime_weights_equal_presso_fake_quantize(cnn, tmp_path, symmetric):
    model, path = cnn
    out = tmp_path / "int4.onnx"
    rows = write_int4(path, out, Int4Config(symmetric=symmetric), precision={})
    assert [r["precision"] for r in rows] == ["int4"] * 3
    reference = copy.deepcopy(model)
    with torch.no_grad():  # what the file should compute: presso's own 4-bit weights
        reference[0].weight.copy_(fake_quantize(reference[0].weight, 4, symmetric, axis=0))
        for i in (3, 5):
            reference[i].weight.copy_(fake_quantize(reference[i].weight, 4, symmetric, group_size=32))
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_weights_are_packed_two_per_byte(cnn, tmp_path):
    model, path = cnn
    out = tmp_path / "int4.onnx"
    write_int4(path, out, Int4Config(), precision={})
    graph = onnx.load(str(out)).graph
    packed = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT4]
    n_weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    assert sum(int(np.prod(i.dims)) for i in packed) == n_weights
    assert sum(len(i.raw_data) for i in packed) == sum((int(np.prod(i.dims)) + 1) // 2 for i in packed)
    assert out.stat().st_size < path.stat().st_size / 5


def test_explicit_group_size_must_divide(cnn, tmp_path):
    _, path = cnn
    with pytest.raises(PressoError, match="does not divide the 512 input features of layer"):
        write_int4(path, tmp_path / "o.onnx", Int4Config(group_size=48), precision={})


def test_auto_group_falls_back_to_per_channel(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 30),), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    rows = write_int4(path, tmp_path / "o.onnx", Int4Config(), precision={})
    assert [r["granularity"] for r in rows] == ["per channel", "group 32"]


@pytest.mark.parametrize("bad", [{"group_size": 1}, {"group_size": 0}, {"bits": 4}, {"group_size": "big"}])
def test_bad_options(bad):
    from presso.recipe.schema import Recipe, Stage

    with pytest.raises(PressoError, match="stage 1 'int4'"):
        Recipe(name="r", stages=[Stage(technique="int4", options=bad)]).configs()


def test_digits_int4_within_budget_and_six_times_smaller():
    ex = presso.load_example("digits")
    report = presso.compress(
        ex.model, "int4", data=ex.data, task=ex.task, bench=BenchSettings(rounds=1, throughput_batch=8)
    ).report
    assert report.budget.passed and report.budget.drop <= 0.01
    assert report.baseline.size_bytes / report.compressed.size_bytes >= 6.0
    assert all(layer["precision"] == "int4" for layer in report.stages[0].layers)


def test_weight_only_models_ask_for_constant_folding(cnn, tmp_path):
    from presso.runtime.session import make_session

    _, path = cnn
    out = tmp_path / "int4.onnx"
    write_int4(path, out, Int4Config(), precision={})
    session = make_session(out)
    assert session.get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    plain = make_session(path)  # an ordinary model keeps ONNX Runtime's defaults
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plain.get_session_options().get_session_config_entry("session.disable_quant_qdq")


def test_writer_failure_is_a_clear_refusal(cnn, tmp_path, monkeypatch):
    import presso.techniques.quantization.weight_only as wo

    model, _ = cnn

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported graph. details")

    monkeypatch.setattr(wo, "write_int4", broken)
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    with pytest.raises(presso.BudgetError, match="int4 failed: unsupported graph"):
        presso.compress(
            model,
            "int4",
            data=(x, np.zeros(40, np.int64)),
            task="classification",
            bench=BenchSettings(rounds=1, throughput_batch=4),
        )


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lin = nn.Embedding(100, 64), nn.Linear(64, 8)

    def forward(self, ids):
        return self.lin(self.emb(ids).mean(1))


def test_embedding_tables_are_quantized_too(tmp_path):
    model = _Embedder().eval()
    src, dst = tmp_path / "e.onnx", tmp_path / "e4.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(2, 5, dtype=torch.long),),
        str(src),
        dynamo=False,
        input_names=["ids"],
        dynamic_axes={"ids": {0: "n", 1: "t"}},
    )
    rows = write_int4(src, dst, Int4Config(), precision={})
    assert {r["op"] for r in rows} == {"Gather", "Gemm"}
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.emb.weight.copy_(fake_quantize(reference.emb.weight, 4, True, group_size=32))
        reference.lin.weight.copy_(fake_quantize(reference.lin.weight, 4, True, group_size=32))
    ids = np.random.default_rng(0).integers(0, 100, (3, 5)).astype(np.int64)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(torch.from_numpy(ids)).numpy(), rtol=0, atol=1e-5)
    assert dst.stat().st_size < src.stat().st_size / 5
