"""Sparse storage of pruned ONNX weights: bitmask + non-zero values, rebuilt and folded by ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose
from onnx import helper, numpy_helper

from presso.errors import PressoError
from presso.measure.size import file_size
from presso.runtime.session import make_session
from presso.techniques.pruning.sparse_storage import pack_mask, write_sparse


def _sparse(rng, shape, sparsity):
    w = rng.standard_normal(shape).astype(np.float32)
    w.reshape(-1)[rng.permutation(w.size)[: round(sparsity * w.size)]] = 0.0
    return w


def _mlp(path, weights, gemm_last=True):
    """x -> [MatMul + Add + Relu]* -> Gemm(transB) ; weights are (in, out) for MatMul, (out, in) for Gemm."""
    inits, nodes, x = [], [], "x"
    for i, w in enumerate(weights):
        last = gemm_last and i == len(weights) - 1
        out_dim = w.shape[0] if last else w.shape[1]
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.full(out_dim, 0.1, np.float32), f"b{i}"),
        ]
        if last:
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], ["y"], name=f"fc{i}", transB=1))
            x = "y"
            continue
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    d_in = weights[0].shape[0]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", 1, ["N", d_in])],
        [helper.make_tensor_value_info(x, 1, ["N", None])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _rebuilt_weights(path, names, elem_types=None):
    """The weights as ONNX Runtime computes them from the stored model (exposed as outputs)."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, (elem_types or {}).get(name, 1), None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, sess.get_inputs()[0].shape[1]), np.float32)
    return dict(zip(names, sess.run(names, {"x": x}), strict=True))


def test_pack_mask_layout_lowest_bit_first():
    assert pack_mask(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], bool)).tolist() == [1, 2]


def test_rebuilt_weights_are_bit_identical_to_masked_weights(tmp_path):
    rng = np.random.default_rng(0)
    w0, w1 = _sparse(rng, (64, 48), 0.8), _sparse(rng, (10, 48), 0.6)
    w0[0, 0], w0[0, 1] = np.float32(1e-45), -0.0  # a denormal survives; -0.0 is a zero
    dense = _mlp(tmp_path / "dense.onnx", [w0, w1])
    rows = write_sparse(dense, tmp_path / "sparse.onnx")
    assert [r["storage"] for r in rows] == ["bitmask", "bitmask"]
    got = _rebuilt_weights(tmp_path / "sparse.onnx", ["w0", "w1"])
    for name, w in (("w0", w0), ("w1", w1)):
        masked = np.where(w != 0, w, np.float32(0.0))
        assert got[name].shape == w.shape
        assert np.array_equal(got[name].view(np.uint32), masked.view(np.uint32))  # bit for bit
    x = rng.standard_normal((32, 64)).astype(np.float32)
    ref, out = (make_session(p).run(None, {"x": x})[0] for p in (dense, tmp_path / "sparse.onnx"))
    assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_rebuild_is_folded_at_session_creation(tmp_path):
    rng = np.random.default_rng(1)
    dense = _mlp(tmp_path / "dense.onnx", [_sparse(rng, (32, 32), 0.9), _sparse(rng, (8, 32), 0.9)])
    write_sparse(dense, tmp_path / "sparse.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "sparse.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert not ops & {"CumSum", "Gather", "Slice", "Cast"}, ops  # only the layers' own ops remain


def test_90_percent_sparse_512_mlp_file_is_at_most_a_fifth(tmp_path):
    rng = np.random.default_rng(2)
    dense = _mlp(tmp_path / "dense.onnx", [_sparse(rng, (512, 512), 0.9), _sparse(rng, (512, 512), 0.9)])
    rows = write_sparse(dense, tmp_path / "sparse.onnx")
    ratio = file_size(tmp_path / "sparse.onnx") / file_size(dense)
    assert ratio <= 0.2, ratio
    assert ratio == pytest.approx(0.1 + 1 / 32, abs=0.01)  # 10% of values at 4 bytes + 1 bit a weight
    for row in rows:
        assert row["sparsity"] == pytest.approx(0.9, abs=1e-5)
        assert row["dense_bytes"] == 512 * 512 * 4
        assert row["stored_bytes"] == 512 * 512 // 8 + (round(0.1 * 512 * 512) + 1) * 4


def test_not_sparse_enough_layer_stays_dense(tmp_path):
    rng = np.random.default_rng(3)
    w0, w1 = _sparse(rng, (64, 64), 0.3), _sparse(rng, (16, 64), 0.9)
    rows = write_sparse(_mlp(tmp_path / "dense.onnx", [w0, w1]), tmp_path / "sparse.onnx", min_sparsity=0.5)
    assert [(r["node"], r["op"], r["storage"]) for r in rows] == [
        ("fc0", "MatMul", "dense"),
        ("fc1", "Gemm", "bitmask"),
    ]
    assert rows[0]["stored_bytes"] == rows[0]["dense_bytes"] == 64 * 64 * 4
    inits = {i.name: i for i in onnx.load(str(tmp_path / "sparse.onnx")).graph.initializer}
    assert np.array_equal(numpy_helper.to_array(inits["w0"]), w0) and "w1" not in inits and "w1_mask" in inits


def test_conv_and_all_zero_weights(tmp_path):
    rng = np.random.default_rng(4)
    wc = _sparse(rng, (4, 3, 3, 3), 0.7)
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["p"], name="pool", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["p", "wz"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", 1, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", 1, ["N", 4])],
        [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(np.zeros((4, 4), np.float32), "wz")],
    )  # fully pruned head
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "cnn.onnx")
    )
    rows = write_sparse(tmp_path / "cnn.onnx", tmp_path / "cnn_sparse.onnx")
    assert [r["storage"] for r in rows] == ["bitmask", "bitmask"] and rows[1]["sparsity"] == 1.0
    model = onnx.load(str(tmp_path / "cnn_sparse.onnx"))
    model.graph.output.append(helper.make_tensor_value_info("wc", 1, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, got = sess.run(None, {"x": np.ones((1, 3, 6, 6), np.float32)})
    assert np.array_equal(got, wc) and np.array_equal(y, np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "0.5", True])
def test_bad_min_sparsity_is_refused(tmp_path, bad):
    rng = np.random.default_rng(5)
    dense = _mlp(tmp_path / "dense.onnx", [_sparse(rng, (8, 8), 0.9)])
    with pytest.raises(PressoError, match=r"'min_sparsity' option must be a number in \(0, 1\]"):
        write_sparse(dense, tmp_path / "sparse.onnx", min_sparsity=bad)


def _int8_model(path, q, scale, zero_point=None):
    """x (N, K) -> MatMul(DequantizeLinear(q (K, N) int8, per output column)) -> y."""
    inputs = ["q", "scale"] + (["zp"] if zero_point is not None else [])
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "scale")]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
    nodes = [
        helper.make_node("DequantizeLinear", inputs, ["w"], name="fc/dq", axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "int8",
        [helper.make_tensor_value_info("x", 1, ["N", q.shape[0]])],
        [helper.make_tensor_value_info("y", 1, ["N", q.shape[1]])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_weights_are_stored_sparse_too(tmp_path):
    rng = np.random.default_rng(6)
    q = (rng.integers(1, 128, (256, 128)) * rng.choice([-1, 1], (256, 128))).astype(np.int8)  # no zeros yet
    q.reshape(-1)[rng.permutation(q.size)[: round(0.9 * q.size)]] = 0
    scale = rng.uniform(0.01, 0.1, 128).astype(np.float32)
    dense = _int8_model(tmp_path / "int8.onnx", q, scale, np.zeros(128, np.int8))
    rows = write_sparse(dense, tmp_path / "sparse.onnx")
    assert [(r["node"], r["op"], r["storage"]) for r in rows] == [("fc/dq", "DequantizeLinear", "bitmask")]
    assert rows[0]["stored_bytes"] == q.size // 8 + round(0.1 * q.size) + 1  # 1 byte a surviving value
    got = _rebuilt_weights(tmp_path / "sparse.onnx", ["q", "w"], {"q": onnx.TensorProto.INT8})
    assert np.array_equal(got["q"], q)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    ref, out = (make_session(p).run(None, {"x": x})[0] for p in (dense, tmp_path / "sparse.onnx"))
    assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_int8_weights_with_nonzero_zero_point_stay_dense(tmp_path):
    q = np.zeros((16, 8), np.uint8)
    dense = _int8_model(tmp_path / "u8.onnx", q, np.ones(8, np.float32), np.full(8, 128, np.uint8))
    assert write_sparse(dense, tmp_path / "sparse.onnx") == []


def test_layer_table_counts_the_sparse_bytes(tmp_path):
    """presso's per-layer stored bytes follow the bitmask rebuild back to its initializers."""
    import torch
    from torch import nn

    from presso.measure.size import layer_storage_bytes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    with torch.no_grad():
        w = model[0].weight
        w[w.abs() <= w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0.0
    src, dst = tmp_path / "m.onnx", tmp_path / "s.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 256),), str(src), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    rows = {r["node"]: r for r in write_sparse(src, dst)}
    sizes = layer_storage_bytes(dst, list(rows))
    sparse_node = next(n for n, r in rows.items() if r["storage"] == "bitmask")
    # The stored weight bytes plus the bias and the shared 256x8 bit lookup table.
    assert (
        rows[sparse_node]["stored_bytes"] + 256 * 4
        <= sizes[sparse_node]
        <= rows[sparse_node]["stored_bytes"] + 256 * 4 + 256 * 8 + 64
    )


def test_parameter_count_counts_the_kept_values_not_the_bitmask(tmp_path):
    from presso.measure.size import parameter_count

    rng = np.random.default_rng(3)
    w0, w1 = _sparse(rng, (64, 128), 0.9), _sparse(rng, (10, 128), 0.2)  # the second stays dense
    dense = _mlp(tmp_path / "dense.onnx", [w0, w1])
    write_sparse(dense, tmp_path / "sparse.onnx")
    kept = int((w0 != 0).sum()) + w1.size + 128 + 10  # non-zero weights, dense layer, biases
    assert parameter_count(dense) == w0.size + w1.size + 128 + 10
    assert parameter_count(tmp_path / "sparse.onnx") == kept
