"""SmoothQuant-style smoothing for dynamic int8: exact in float, chosen per layer by a
simulation that matches ONNX Runtime's own int8 error on both of its x86 kernels (this
CPU's, and a CPU without VNNI, emulated: see emulated_cpu.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from emulated_cpu import run_python_without_vnni
from onnx import TensorProto, helper, numpy_helper

from presso.runtime.cpu import cpu_features
from presso.techniques.quantization.smooth import choose_scales, simulated_error, smooth_matmuls


def _layernorm(x, gamma):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + 1e-5) * gamma).astype(np.float32)


def _matmul_model(path, w: np.ndarray, gamma: np.ndarray):
    """LayerNorm (scale ``gamma``, which makes outlier channels as in BERT) -> MatMul."""
    k, n = w.shape
    graph = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", epsilon=1e-5),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(gamma, "gamma"),
            numpy_helper.from_array(np.zeros(k, np.float32), "beta"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _quantize(src, dst):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


@pytest.fixture
def outlier_layer(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(64, 32)) * 0.1).astype(np.float32)
    gamma = np.ones(64, np.float32)
    gamma[3] = 25.0  # one outlier channel, as the feed-forward input of BERT layers
    src = tmp_path / "mm.onnx"
    _matmul_model(src, w, gamma)
    inputs = [rng.normal(size=(48, 64)).astype(np.float32) for _ in range(16)]
    return src, w, inputs, [_layernorm(x, gamma) for x in inputs]


def _errors(outputs, calls, w) -> float:
    return sum(float(np.sum((y - h @ w) ** 2)) for y, h in zip(outputs, calls, strict=True))


_CHILD = """
import sys, numpy as np, onnxruntime as ort
d = np.load(sys.argv[1])
calls = [d[k] for k in sorted(d.files, key=lambda k: int(k[4:]))]  # arr_0, arr_1, ... arr_10
for path in sys.argv[2:]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.savez(path + ".out.npz", *[sess.run(None, {"x": x})[0] for x in calls])
"""


def _outputs_without_vnni(tmp_path, inputs, *paths):
    """Outputs of each model on ``inputs``, run by ORT on an emulated CPU without VNNI."""
    np.savez(tmp_path / "inputs.npz", *inputs)
    run_python_without_vnni(_CHILD, str(tmp_path / "inputs.npz"), *map(str, paths))
    outs = [np.load(f"{p}.out.npz") for p in paths]
    return [[o[k] for k in sorted(o.files, key=lambda k: int(k[4:]))] for o in outs]


@pytest.mark.int8_kernel
def test_simulation_matches_onnx_runtime_int8_error_on_this_cpus_kernel(outlier_layer, tmp_path):
    src, w, inputs, calls = outlier_layer
    _quantize(src, tmp_path / "q.onnx")
    measured = _errors([_run(tmp_path / "q.onnx", x) for x in inputs], calls, w)
    rows = [np.arange(len(x)) for x in calls]
    assert simulated_error(calls, rows, w, None) == pytest.approx(measured, rel=1e-3)
    # The kernels' errors differ ~6x on this layer: a model of the other kernel would be wrong here.
    other = simulated_error(calls, rows, w, None, saturating=not cpu_features().int8_saturates)
    assert not 0.5 < other / measured < 2


@pytest.mark.int8_kernel
def test_smoothing_is_exact_in_float_and_cuts_the_real_int8_error_on_this_cpus_kernel(
    outlier_layer, tmp_path
):
    src, w, inputs, calls = outlier_layer
    dst = tmp_path / "smooth.onnx"
    rows = smooth_matmuls(src, dst, ({"x": x} for x in inputs))
    assert rows[0]["smoothing"].startswith("alpha") and rows[0]["simulated_error_ratio"] < 0.5
    x = np.concatenate(inputs)
    np.testing.assert_allclose(_run(dst, x), _run(src, x), rtol=1e-4, atol=1e-4)  # same function
    _quantize(src, tmp_path / "q_plain.onnx")
    _quantize(dst, tmp_path / "q_smooth.onnx")
    plain = _errors([_run(tmp_path / "q_plain.onnx", x) for x in inputs], calls, w)
    smooth = _errors([_run(tmp_path / "q_smooth.onnx", x) for x in inputs], calls, w)
    assert smooth < 0.5 * plain  # ORT's real int8 error, not only the simulation


@pytest.mark.int8_kernel
def test_simulation_matches_onnx_runtime_int8_error_without_vnni(outlier_layer, tmp_path):
    src, w, inputs, calls = outlier_layer
    _quantize(src, tmp_path / "q.onnx")
    [outputs] = _outputs_without_vnni(tmp_path, inputs, tmp_path / "q.onnx")
    rows = [np.arange(len(x)) for x in calls]
    measured = _errors(outputs, calls, w)
    assert simulated_error(calls, rows, w, None, saturating=True) == pytest.approx(measured, rel=1e-3)
    assert simulated_error(calls, rows, w, None, saturating=False) < measured / 3  # saturation: most of it


@pytest.mark.int8_kernel
def test_smoothing_chosen_for_saturating_pairs_cuts_the_real_int8_error_without_vnni(outlier_layer, tmp_path):
    src, w, inputs, calls = outlier_layer
    dst = tmp_path / "smooth.onnx"
    rows = smooth_matmuls(src, dst, ({"x": x} for x in inputs), saturating=True)
    assert rows[0]["smoothing"].startswith("alpha") and rows[0]["simulated_error_ratio"] < 0.5
    _quantize(src, tmp_path / "q_plain.onnx")
    _quantize(dst, tmp_path / "q_smooth.onnx")
    plain, smooth = _outputs_without_vnni(
        tmp_path, inputs, tmp_path / "q_plain.onnx", tmp_path / "q_smooth.onnx"
    )
    measured_ratio = _errors(smooth, calls, w) / _errors(plain, calls, w)
    assert measured_ratio < 0.5  # ORT's real int8 error on that kernel, not only the simulation
    assert measured_ratio == pytest.approx(rows[0]["simulated_error_ratio"], rel=0.05)


def test_layers_without_outliers_are_left_alone(tmp_path):
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(64, 32)) * 0.1).astype(np.float32)
    calls = [_layernorm(rng.normal(size=(48, 64)).astype(np.float32), 1.0) for _ in range(8)]
    s, alpha, ratio = choose_scales(calls, w)
    assert s is None and alpha is None and ratio > 0.95
    src, dst = tmp_path / "mm.onnx", tmp_path / "s.onnx"
    _matmul_model(src, w, np.ones(64, np.float32))
    smooth_matmuls(src, dst, ({"x": x} for x in calls))
    assert [n.op_type for n in onnx.load(str(dst)).graph.node] == ["LayerNormalization", "MatMul"]  # no Mul


def test_only_layernorm_fed_matmuls_are_considered(tmp_path):
    w = np.ones((8, 4), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    src = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert smooth_matmuls(src, tmp_path / "o.onnx", [{"x": np.ones((2, 8), np.float32)}]) == []
