"""Size on disk and parameter counts of ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Integer initializers are shapes, indices and token positions, not weights.
_WEIGHT_DTYPES = {1, 2, 3, 10, 16, 21, 22}  # float, uint8, int8, float16, bfloat16, uint4, int4
# Operands that hold quantization parameters rather than weights.
_QPARAM_SLOTS = {
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3), "ConvInteger": (2, 3),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QLinearConv": (1, 2, 4, 5, 6, 7),
    "DynamicQuantizeMatMul": (2, 3), "QAttention": (3, 4, 6, 7),
}


def file_size(path: str | Path) -> int:
    """Bytes of an ONNX file plus its external-data files next to it."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                total += (path.parent / entry.value).stat().st_size
    return total


def parameter_count(path: str | Path) -> int:
    """Elements of weight initializers (quantization scales and zero points excluded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    qparams = set()
    for node in proto.graph.node:
        for slot in _QPARAM_SLOTS.get(node.op_type, ()):
            if slot < len(node.input):
                qparams.add(node.input[slot])
    # int32 biases of QDQ graphs are weights too: they feed DequantizeLinear.
    dequantized = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    total = 0
    for init in proto.graph.initializer:
        is_weight = init.data_type in _WEIGHT_DTYPES or init.name in dequantized
        # ORT's quantizers name every scale and zero point with these suffixes (kept by
        # export/compact.py), also where they feed a plain Mul (dynamic per-channel)
        # rather than a slot above.
        is_qparam = init.name in qparams or init.name.endswith(("_scale", "_zero_point"))
        if is_weight and not is_qparam:
            n = int(np.prod(init.dims)) if init.dims else 1
            if n > 1:  # scalars are constants of the graph, not parameters
                total += n
    return total
