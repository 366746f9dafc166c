"""layer_sizes: the stored bytes of each layer of an ONNX file, largest first, for fp32 exports and
for presso's int8 models (1-byte weights plus their scales and zero points)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import presso
from presso.measure import BenchSettings
from presso.measure.size import layer_sizes
from presso.recipe import measure as recipe_measure
from presso.recipe.schema import Recipe, Stage

ITEMSIZE = {
    TensorProto.FLOAT: 4,
    TensorProto.INT8: 1,
    TensorProto.UINT8: 1,
    TensorProto.INT32: 4,
    TensorProto.INT64: 8,
}


def _export(model: nn.Module, example: torch.Tensor, path) -> None:
    torch.onnx.export(
        model.eval(), (example,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )


def _init_bytes(path) -> int:
    return sum(int(np.prod(i.dims)) * ITEMSIZE[i.data_type] for i in onnx.load(str(path)).graph.initializer)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)  # (N, 8, 8, 8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1, bias=False)  # (N, 4, 8, 8)
        self.fc1 = nn.Linear(4 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = x.reshape(x.shape[0], -1)  # (N, 256), shape computed from the activation
        return self.fc2(torch.relu(self.fc1(x)))


def test_fp32_cnn_rows_are_its_layers_at_four_bytes_a_weight(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    path = tmp_path / "cnn.onnx"
    _export(model, torch.zeros(1, 1, 8, 8), path)
    rows = layer_sizes(path)
    assert [(r["node"], r["op"], r["bytes"]) for r in rows] == [
        ("/fc1/Gemm", "Gemm", 4 * (32 * 256 + 32)),  # 32,896
        ("/fc2/Gemm", "Gemm", 4 * (10 * 32 + 10)),  # 1,320
        ("/c2/Conv", "Conv", 4 * (4 * 8 * 3 * 3)),  # 1,152: no bias
        ("/c1/Conv", "Conv", 4 * (8 * 1 * 3 * 3 + 8)),  # 320
    ]
    by_module = {"/fc1/Gemm": model.fc1, "/fc2/Gemm": model.fc2, "/c2/Conv": model.c2, "/c1/Conv": model.c1}
    for r in rows:
        assert r["bytes"] == 4 * sum(p.numel() for p in by_module[r["node"]].parameters())
    total = 4 * sum(p.numel() for p in model.parameters())
    assert sum(r["bytes"] for r in rows) == _init_bytes(path) == total


class TokenMLP(nn.Module):
    """Linear layers on (N, T, C) rows export as MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):  # (N, T, 6)
        return self.b(torch.relu(self.a(x)))


def test_matmul_weights_and_add_biases_are_separate_rows(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tokens.onnx"
    _export(TokenMLP(), torch.zeros(1, 5, 6), path)
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    rows = layer_sizes(path)
    assert [(r["node"], r["op"], r["bytes"]) for r in rows] == [
        ("/a/MatMul", "MatMul", 4 * 6 * 16),
        ("/b/MatMul", "MatMul", 4 * 16 * 3),
        ("/a/Add", "Add", 4 * 16),
        ("/b/Add", "Add", 4 * 3),
    ]
    assert sum(r["bytes"] for r in rows) == _init_bytes(path) == 4 * (6 * 16 + 16 + 16 * 3 + 3)


def test_a_layer_used_twice_counts_for_both(tmp_path):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    path = tmp_path / "twice.onnx"
    _export(Twice(), torch.zeros(1, 8), path)
    rows = layer_sizes(path)
    assert [r["bytes"] for r in rows] == [4 * (64 + 8)] * 2 and len({r["node"] for r in rows}) == 2
    assert _init_bytes(path) == 4 * (64 + 8)


def _reshape_matmul(path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    inits = [
        numpy_helper.from_array(np.ones((6, 4), np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 6], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="flat"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph), str(path))


def test_a_reshape_shape_is_not_a_layer(tmp_path):
    path = tmp_path / "reshape.onnx"
    _reshape_matmul(path)
    assert [(r["node"], r["bytes"]) for r in layer_sizes(path)] == [("mm", 4 * 24)]


# --- after presso's int8 ------------------------------------------------------------------------


def _mlp_and_rows():
    """A 16 -> 64 -> 4 MLP and 300 random rows labelled by it (a rule it has learned exactly)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    X = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    with torch.no_grad():
        model[2].bias.sub_(model(torch.from_numpy(X)).mean(0))  # centred logits: every class occurs
        y = model(torch.from_numpy(X)).argmax(1).numpy()
    assert np.bincount(y, minlength=4).min() > 20  # every class present
    return model, X, y


@pytest.fixture(scope="module")
def int8_results():
    """variant -> CompressionResult of presso.compress with that int8 variant pinned."""
    model, X, y = _mlp_and_rows()
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe_measure, "peak_memory_mb", lambda *args, **kwargs: None)  # fresh processes: slow
        for variant in ("static-s8s8", "dynamic"):
            recipe = Recipe(name="int8", stages=[Stage(technique="int8", options={"variants": [variant]})])
            # max_drop 1: the budget always passes, so no layer falls back to fp32
            out[variant] = presso.compress(
                model,
                recipe,
                data=(X, y),
                task="classification",
                max_drop=1.0,
                bench=BenchSettings(rounds=1, throughput_batch=8),
            )
    return out


BASELINE_ROWS = [("/0/Gemm", "Gemm", 4 * (64 * 16 + 64)), ("/2/Gemm", "Gemm", 4 * (4 * 64 + 4))]


@pytest.mark.int8_kernel
@pytest.mark.parametrize("variant", ["static-s8s8", "dynamic"])
def test_report_carries_layer_sizes_of_both_models(int8_results, variant):
    result = int8_results[variant]
    sizes = result.report.layer_sizes
    assert [(r.node, r.op, r.bytes) for r in sizes["baseline"]] == BASELINE_ROWS
    assert [(r.node, r.op, r.bytes) for r in sizes["compressed"]] == [
        (r["node"], r["op"], r["bytes"]) for r in layer_sizes(result.model_path)
    ]


def _operand_initializers(proto: onnx.ModelProto, node: onnx.NodeProto) -> list[onnx.TensorProto]:
    """Initializers feeding ``node`` directly or through one DequantizeLinear (a QDQ weight or bias)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = []
    for name in node.input[1:]:
        if name in inits:
            found.append(inits[name])
        elif name in producer and producer[name].op_type == "DequantizeLinear":
            found += [inits[t] for t in producer[name].input if t in inits]
    return found


def test_static_int8_layer_counts_int8_weights_with_scales_zero_points_and_int32_bias(int8_results):
    path = int8_results["static-s8s8"].model_path
    proto = onnx.load(str(path))
    gemm = next(n for n in proto.graph.node if n.name == "/0/Gemm")
    operands = sorted(
        (TensorProto.DataType.Name(t.data_type), tuple(t.dims)) for t in _operand_initializers(proto, gemm)
    )
    # weight (64, 16) int8 per-channel: 64 float scales, 64 int8 zero points; bias int32 with
    # its own 64 scales and 64 int32 zero points
    assert operands == [
        ("FLOAT", (64,)),
        ("FLOAT", (64,)),
        ("INT32", (64,)),
        ("INT32", (64,)),
        ("INT8", (64,)),
        ("INT8", (64, 16)),
    ]
    by_hand = 64 * 16 * 1 + 64 * 4 + 64 * 1 + 64 * 4 + 64 * 4 + 64 * 4
    rows = {r["node"]: r for r in layer_sizes(path)}
    assert rows["/0/Gemm"]["bytes"] == by_hand == 2112
    assert rows["/2/Gemm"]["bytes"] == 4 * 64 * 1 + 4 * 4 + 4 * 1 + 3 * 4 * 4 == 324
    assert rows["/0/Gemm"]["bytes"] < BASELINE_ROWS[0][2] / 2  # 2,112 of 4,352


def test_dynamic_int8_layer_is_integer_matmul_plus_scale_and_bias_rows(int8_results):
    path = int8_results["dynamic"].model_path
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    mm = next(n for n in proto.graph.node if n.name == "/0/Gemm_MatMul_quant")
    assert mm.op_type == "MatMulInteger"
    weight, zero_point = inits[mm.input[1]], inits[mm.input[3]]
    assert (weight.data_type, tuple(weight.dims)) == (TensorProto.INT8, (16, 64))
    assert (zero_point.data_type, tuple(zero_point.dims)) == (TensorProto.INT8, (64,))
    rows = [(r["node"], r["op"], r["bytes"]) for r in layer_sizes(path)]
    # The weight's per-channel scales multiply the activation's scale in their own Mul node and
    # the float bias is added by its own Add: both are rows of their own.
    assert rows == [
        ("/0/Gemm_MatMul_quant", "MatMulInteger", 16 * 64 * 1 + 64 * 1),  # 1,088
        ("/2/Gemm_MatMul_quant", "MatMulInteger", 64 * 4 * 1 + 4 * 1),  # 260
        ("/0/Gemm_MatMul_quant_scales_mul", "Mul", 64 * 4),
        ("/0/Gemm_Add", "Add", 64 * 4),
        ("/2/Gemm_MatMul_quant_scales_mul", "Mul", 4 * 4),
        ("/2/Gemm_Add", "Add", 4 * 4),
    ]
    assert sum(r[2] for r in rows) == _init_bytes(path) == 1892


def test_static_int8_rows_are_only_the_layers(int8_results):
    path = int8_results["static-s8s8"].model_path
    assert [r["node"] for r in layer_sizes(path)] == ["/0/Gemm", "/2/Gemm"]
