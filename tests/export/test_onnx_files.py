"""Models past protobuf's 2 GB limit: saved with a data file beside them and copied with it.

The limit is lowered here (``EXTERNAL_ABOVE``) so that a small model takes the large-model
path; tests/robustness/test_resource_bounds.py runs a real 2 GB model end to end (slow).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from presso.runtime import onnx_files
from presso.runtime.onnx_files import copy_onnx, external_files, model_bytes, save_onnx


def _model(hidden: int = 256) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path) -> np.ndarray:
    x = np.ones((2, 8), np.float32)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(onnx_files, "EXTERNAL_ABOVE", 4096)


def test_a_small_model_stays_one_file(tmp_path):
    path = tmp_path / "m.onnx"
    save_onnx(_model(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert external_files(onnx.load(str(path), load_external_data=False)) == []


def test_a_large_model_gets_a_data_file_and_saving_it_again_does_not_grow_it(tmp_path, small_limit):
    path = tmp_path / "m.onnx"
    reference = _model()
    save_onnx(_model(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size >= 8 * 256 * 4 + 256 * 3 * 4
    size = model_bytes(path)
    assert size == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    save_onnx(onnx.load(str(path)), path)  # read whole, saved in place (as compact_names does)
    assert model_bytes(path) == size
    ref = tmp_path / "ref.onnx"
    onnx.save(reference, str(ref))
    np.testing.assert_array_equal(_run(path), _run(ref))


def test_a_copy_brings_its_data_file_under_its_own_name(tmp_path, small_limit):
    src = tmp_path / "a" / "m.onnx"
    src.parent.mkdir()
    save_onnx(_model(), src)
    expected = _run(src)
    dst = tmp_path / "b" / "model.onnx"
    dst.parent.mkdir()
    copy_onnx(src, dst)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert external_files(onnx.load(str(dst), load_external_data=False)) == ["model.onnx.data"]
    (src.parent / "m.onnx.data").unlink()  # the copy does not read the original's data
    np.testing.assert_array_equal(_run(dst), expected)
    assert model_bytes(dst) > 8 * 256 * 4


def test_a_proto_read_without_its_data_keeps_pointing_at_it(tmp_path, small_limit):
    path = tmp_path / "m.onnx"
    save_onnx(_model(), path)
    expected = _run(path)
    proto = onnx.load(str(path), load_external_data=False)
    proto.graph.node[0].name = "first"
    save_onnx(proto, path)
    assert (tmp_path / "m.onnx.data").is_file()
    np.testing.assert_array_equal(_run(path), expected)
