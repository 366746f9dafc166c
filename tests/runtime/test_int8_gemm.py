"""presso's numpy emulation of ONNX Runtime's dynamic int8 MatMul equals ORT itself, on
the kernel of this CPU and on the other x86 kernel (an emulated CPU without VNNI)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
from emulated_cpu import run_python_without_vnni
from onnx import TensorProto, helper, numpy_helper, save

from presso.runtime.cpu import cpu_features, int8_products_saturate
from presso.runtime.int8_gemm import dynamic_matmul, quantize_s8_columns, quantize_u8, u8s8_gemm


def _vpmaddubsw_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MLAS's AVX2 u8 x s8 kernel, one output at a time: K zero-padded to lanes of 4 bytes;
    vpmaddubsw adds the products of bytes (0, 1) and (2, 3) of a lane, each pair saturated
    to int16; vpmaddwd (by ones) and vpaddd sum the pairs exactly in int32."""
    m, k = a.shape
    padded = -(-k // 4) * 4
    a = np.pad(a.astype(int), ((0, 0), (0, padded - k)))
    b = np.pad(b.astype(int), ((0, padded - k), (0, 0)))
    out = np.zeros((m, b.shape[1]), np.int64)
    for i in range(m):
        for j in range(b.shape[1]):
            acc = 0
            for lane in range(0, padded, 4):
                for p in (lane, lane + 2):
                    acc += max(-32768, min(32767, a[i, p] * b[p, j] + a[i, p + 1] * b[p + 1, j]))
            out[i, j] = acc
    return out


@pytest.mark.parametrize("k", [13, 16, 67])
def test_saturating_product_equals_a_scalar_reference_of_vpmaddubsw(k):
    rng = np.random.default_rng(k)
    a = rng.integers(0, 256, size=(5, k)).astype(np.uint8)
    b = rng.integers(-127, 128, size=(k, 7)).astype(np.int8)
    a[0], b[:, 0] = 255, 127  # every pair overflows int16 (2 x 255 x 127 = 64,770)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    saturated = u8s8_gemm(a, b, saturating=True)
    np.testing.assert_array_equal(saturated, _vpmaddubsw_reference(a, b))
    np.testing.assert_array_equal(u8s8_gemm(a, b, saturating=False), exact)
    assert saturated[0, 0] == 32767 * (k // 2) + 255 * 127 * (k % 2)  # an odd K's last pair: 255 x 127 + 0
    assert (saturated != exact).mean() > 0.2  # the data does saturate: the two kernels differ


def test_u8_activations_equal_onnx_runtime_dynamic_quantize_linear():
    x = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 3 + 1
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 40])],
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in (("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q, s, z = sess.run(None, {"x": x})
    mine_q, mine_s, mine_z = quantize_u8(x)
    np.testing.assert_array_equal(mine_q, q)
    assert mine_s == pytest.approx(float(s), rel=1e-7) and mine_z == int(z)


def _dynamic_model(path, w: np.ndarray):
    """What quantize_dynamic(per_channel=True) makes of ``x @ w``: DynamicQuantizeLinear ->
    MatMulInteger (u8 x s8, the activation's zero point) -> Cast -> Mul by the two scales.
    The weights are quantized by presso's emulation, so only ORT's kernel is compared."""
    qw, sw = quantize_s8_columns(w)
    k, n = w.shape
    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["xs", "ws"], ["s"]),
            helper.make_node("Mul", ["accf", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(qw, "w"), numpy_helper.from_array(sw, "ws")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _saturating_case(tmp_path):
    """Weights with large columns and calls whose u8 values are large: pairs overflow int16.
    Three calls: all-positive rows (zero point 0), centred rows, and one row (MLAS's GEMV)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(67, 24)).astype(np.float32)  # odd K: the kernel's zero padding
    calls = [rng.uniform(0, 1, size=(9, 67)), rng.normal(size=(5, 67)), rng.uniform(-0.2, 1, size=(1, 67))]
    calls = [c.astype(np.float32) for c in calls]
    _dynamic_model(tmp_path / "dyn.onnx", w)
    np.savez(tmp_path / "calls.npz", *calls)
    return w, calls


def _worst(outputs, w, calls, saturating: bool) -> float:
    return max(
        float(np.abs(y - dynamic_matmul(x, w, saturating=saturating)).max())
        for y, x in zip(outputs, calls, strict=True)
    )


@pytest.mark.int8_kernel
def test_dynamic_matmul_equals_onnx_runtime_on_this_cpus_int8_kernel(tmp_path):
    w, calls = _saturating_case(tmp_path)
    sess = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    outputs = [sess.run(None, {"x": x})[0] for x in calls]
    saturates = cpu_features().int8_saturates
    assert _worst(outputs, w, calls, saturates) < 1e-4  # float32 rounding of ORT's last Mul
    assert _worst(outputs, w, calls, not saturates) > 0.5  # the other kernel's sums are not ORT's here


_CHILD = """
import sys, numpy as np, onnxruntime as ort
from presso.runtime.cpu import cpu_features
d = np.load(sys.argv[1] + "/calls.npz")
sess = ort.InferenceSession(sys.argv[1] + "/dyn.onnx", providers=["CPUExecutionProvider"])
np.savez(sys.argv[1] + "/out.npz", *[sess.run(None, {"x": d[k]})[0] for k in sorted(d.files)])
print(cpu_features().int8_saturates)
"""


@pytest.mark.int8_kernel
def test_dynamic_matmul_equals_onnx_runtime_on_an_emulated_cpu_without_vnni(tmp_path):
    w, calls = _saturating_case(tmp_path)
    done = run_python_without_vnni(_CHILD, str(tmp_path))
    assert done.stdout.split() == ["True"]  # presso's probe sees the saturating kernel there
    out = np.load(tmp_path / "out.npz")
    outputs = [out[k] for k in sorted(out.files)]
    assert _worst(outputs, w, calls, saturating=True) < 1e-4
    assert _worst(outputs, w, calls, saturating=False) > 0.5


def _mlas_saturates(flags: set[str]) -> bool:
    """MLAS's choice of u8 x s8 kernel from the CPU's flags (platform.cpp): AVX2 and
    AVX-512 core (F, BW, DQ, VL) kernels saturate; their VNNI and AMX kernels do not."""
    if "avx2" not in flags:
        return False  # SSE4.1 / generic paths widen to 16 bits first
    if {"amx_tile", "amx_int8"} <= flags:
        return False
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx512_vnni" not in flags
    return "avx_vnni" not in flags


@pytest.mark.int8_kernel
def test_probe_agrees_with_mlas_dispatch_on_this_cpus_flags():
    if os.environ.get("PRESSO_EMULATED_CPU") == "Haswell":  # .ci/pytest-without-vnni: the host's cpuinfo
        flags = {"avx", "avx2", "fma", "f16c"}
    else:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    assert int8_products_saturate() == _mlas_saturates(flags)
