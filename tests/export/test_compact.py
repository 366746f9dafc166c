"""Compacting tensor names changes bytes, not behaviour."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from presso.export.compact import compact_names


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_compacted_model_is_smaller_and_identical(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
    )
    original = tmp_path / "original.onnx"
    shutil.copyfile(path, original)
    node_names = [n.name for n in onnx.load(str(path)).graph.node]
    compact_names(path)
    compacted = onnx.load(str(path))
    onnx.checker.check_model(compacted)
    assert path.stat().st_size < original.stat().st_size
    assert [n.name for n in compacted.graph.node] == node_names  # reports refer to these
    assert [i.name for i in compacted.graph.input] == ["image"]
    assert [o.name for o in compacted.graph.output] == ["logits"]
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        _session(path).run(None, {"image": x})[0], _session(original).run(None, {"image": x})[0]
    )


def test_parameter_count_survives_compaction(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    from presso.measure.size import parameter_count

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 16),), str(fp32), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    quantize_dynamic(str(fp32), str(int8), per_channel=True)
    n_params = sum(p.numel() for p in model.parameters())
    for path in (fp32, int8):
        assert parameter_count(path) == n_params
        compact_names(path)
        assert parameter_count(path) == n_params


def test_unnamed_nodes_get_distinct_names(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"], name="Relu_1"),  # the name the first pick would take
            helper.make_node("MatMul", ["b", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    compact_names(path)
    names = [n.name for n in onnx.load(str(path)).graph.node]
    assert names == ["MatMul_0", "Relu_1", "MatMul_2"]
