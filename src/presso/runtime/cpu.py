"""What ONNX Runtime's int8 kernels compute on this CPU.

ORT's MLAS picks its u8 x s8 GEMM kernel from CPUID when it starts (``platform.cpp``).
With AVX-512 VNNI, AVX-VNNI or AMX the four products of each int32 lane are summed
exactly (``vpdpbusd``). With AVX2, or AVX-512 without VNNI, it uses ``vpmaddubsw``: each
pair of adjacent products along K (k = 2j, 2j+1) is added in int16 *with saturation*
before the exact int32 sums (``QgemmU8S8KernelAvx2.S``). Dynamic int8 (u8 activations)
and static QDQ int8 (ORT turns s8 activations into u8 on x86) both run on that kernel.

Which of the two ORT runs is probed, not guessed from the CPU's flags: one MatMulInteger
whose pairs of products overflow int16 tells them apart. The probe follows ORT's own
dispatch wherever it runs: under an emulated CPU (whose /proc/cpuinfo is the host's), in a
VM that hides features, or with a future ORT that dispatches differently.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import numpy as np

_PROBE_K = 4
_PROBE_EXACT = _PROBE_K * 255 * 127  # 129,540; two saturated pairs give 2 * 32,767


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    avx2: bool
    avx512: bool
    vnni: bool  # the CPU's flags (AVX-512 VNNI or AVX-VNNI)
    bf16: bool  # native bfloat16 arithmetic (AVX-512 BF16 or AMX): bf16 training pays off
    int8_saturates: bool  # probed: ORT's u8 x s8 products saturate in pairs at int16

    @property
    def int8_kernel(self) -> str:
        if self.int8_saturates:
            return "u8 x s8 pairs saturate at int16 (vpmaddubsw: AVX2, or AVX-512 without VNNI)"
        return "u8 x s8 summed exactly in int32"

    def describe(self) -> dict:
        return {
            "cpu": self.model,
            "avx2": self.avx2,
            "avx512": self.avx512,
            "vnni": self.vnni,
            "bf16": self.bf16,
            "int8_kernel": self.int8_kernel,
        }


@functools.cache
def cpu_features() -> CpuFeatures:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return CpuFeatures(
        model=model,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}),
        bf16=bool(flags & {"avx512_bf16", "amx_bf16"}),
        int8_saturates=int8_products_saturate(),
    )


@functools.cache
def int8_products_saturate() -> bool:
    """Whether ONNX Runtime's u8 x s8 GEMM saturates pairs of products at int16 here.

    255 x 127 four times: exact sums give 129,540, the saturating kernel 65,534. Two rows
    and a constant B, as quantized models run it (prepacked weights; a one-row call takes
    MLAS's GEMV kernel, which pairs products the same way).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = 16
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "presso-int8-probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, _PROBE_K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
        [numpy_helper.from_array(np.full((_PROBE_K, n), 127, np.int8), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": np.full((2, _PROBE_K), 255, np.uint8)})[0]
    return bool(np.any(y != _PROBE_EXACT))
