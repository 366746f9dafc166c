"""Size on disk and parameter counts of ONNX models."""

from __future__ import annotations

from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from presso.runtime.onnx_files import model_bytes

if TYPE_CHECKING:
    import onnx

# Integer initializers are shapes, indices and token positions, not weights.
_WEIGHT_DTYPES = {1, 2, 3, 10, 16, 21, 22}  # float, uint8, int8, float16, bfloat16, uint4, int4
# Operands that hold quantization parameters rather than weights.
_QPARAM_SLOTS = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "DynamicQuantizeMatMul": (2, 3),
    "QAttention": (3, 4, 6, 7),
}


def file_size(path: str | Path) -> int:
    """Bytes of an ONNX file plus its external-data files next to it."""
    return model_bytes(path)


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
    # Sparse storage (techniques/pruning/sparse_storage.py): the bitmask and the shared bit
    # table are bookkeeping, the values tensor holds the kept weights after a leading 0.
    masks = {n.input[0] for n in proto.graph.node if n.name.endswith("/sparse_bytes")}
    values = {n.input[0] for n in proto.graph.node if n.name.endswith("/sparse_values")}
    qparams |= masks | {n.input[0] for n in proto.graph.node if n.name.endswith("/sparse_bits")}
    total = -len(values)
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


# Ops that rebuild or reshape a stored weight on its way to the layer that uses it.
# Only followed along tensors computed from initializers alone (see _constant), so
# arithmetic ops here never pull in activations: they rebuild sparse (bitmask + CumSum),
# hashed (Range/Mod) and clustered weights.
_WEIGHT_PATH_OPS = {
    "DequantizeLinear",
    "Cast",
    "Gather",
    "Transpose",
    "Reshape",
    "Mul",
    "DynamicQuantizeLinear",
    "Slice",
    "CumSum",
    "Add",
    "Sub",
    "Mod",
    "Range",
    "Where",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Expand",
    "Flatten",
}


def layer_storage_bytes(path: str | Path, nodes: list[str]) -> dict[str, int]:
    """Bytes of the stored weights and biases (with their scales, zero points and
    codebooks) of each named node: its initializer operands, followed back through the nodes that rebuild a
    weight at run time (DequantizeLinear, Cast, a codebook Gather...).

    Packed 4-bit tensors count at their packed size; an initializer shared by two layers
    counts for both.
    """
    import onnx

    return _storage_bytes(onnx.load(str(path), load_external_data=False), nodes)


def layer_family_bytes(path: str | Path, layers: list[str]) -> dict[str, int]:
    """:func:`layer_storage_bytes` of each layer named as it was before quantization: ONNX
    Runtime's quantizers name the nodes a layer becomes after it (NAME_quant, a MatMulInteger
    or QLinearConv; for a Gemm, NAME_MatMul_quant, its scale's NAME_MatMul_quant_scales_mul
    and the bias's NAME_Add), so a layer counts its whole family: the nodes whose name
    extends its own, other layers' nodes excepted. Layers with no node in the model are
    left out."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = [n.name for n in proto.graph.node]
    named = set(layers)
    family = {
        layer: [m for m in names if m == layer or (m.startswith(layer + "_") and m not in named)]
        for layer in layers
    }
    sizes = _storage_bytes(proto, sorted({m for members in family.values() for m in members}))
    return {
        layer: sum(sizes[m] for m in members)
        for layer, members in family.items()
        if any(m in sizes for m in members)
    }


def _storage_bytes(proto: onnx.ModelProto, nodes: list[str]) -> dict[str, int]:
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    by_name = {n.name: n for n in graph.node}

    def nbytes(init: onnx.TensorProto) -> int:
        n = int(np.prod(init.dims)) if init.dims else 1
        bits = {21: 4, 22: 4, 2: 8, 3: 8, 10: 16, 16: 16, 11: 64, 7: 64, 6: 32, 12: 32}.get(
            init.data_type, 32
        )
        return (n * bits + 7) // 8

    def stored(tensor: str, seen: set[str]) -> int:
        if tensor in seen:
            return 0
        seen.add(tensor)
        if tensor in inits:
            return nbytes(inits[tensor])
        node = producer.get(tensor)
        if node is None or node.op_type not in _WEIGHT_PATH_OPS:
            return 0  # an activation, not a weight
        return sum(stored(t, seen) for t in node.input if t)

    out = {}
    for name in nodes:
        node = by_name.get(name)
        if node is not None:
            seen: set[str] = set()
            # Activations (input 0 of most ops) are not storage: only constant operands count.
            out[name] = sum(stored(t, seen) for t in node.input if t and _constant(t, inits, producer))
    return out


# Nodes with constant operands that are not layers: shapes and indices of reshaping ops,
# and the quantize / dequantize pairs around activations (their scale is not a weight).
_NOT_LAYERS = {
    "Reshape",
    "Expand",
    "Slice",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Tile",
    "Pad",
    "Shape",
    "ConstantOfShape",
    "Range",
    "Transpose",
    "Cast",
    "Split",
    "Where",
    "Equal",
    "Flatten",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
}


def layer_sizes(path: str | Path) -> list[dict]:
    """Bytes of every layer's stored weights (see :func:`layer_storage_bytes`), largest
    first: one row per node that computes on activations with at least one stored operand
    (a Conv, a MatMul, an embedding Gather...); the nodes that rebuild weights are counted
    with the layer they feed."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    producer = {out: n for n in proto.graph.node for out in n.output}
    memo: dict[str, bool] = {}
    layers = {
        n.name: n.op_type
        for n in proto.graph.node
        if n.name
        and n.op_type not in _NOT_LAYERS
        and not all(_constant(o, inits, producer, memo=memo) for o in n.output if o)
        and any(_constant(t, inits, producer, memo=memo) for t in n.input if t)
    }
    sizes = layer_storage_bytes(path, list(layers))
    rows = [{"node": name, "op": layers[name], "bytes": b} for name, b in sizes.items() if b > 0]
    return sorted(rows, key=lambda r: -r["bytes"])


def _constant(
    tensor: str,
    inits: Container[str],
    producer: dict[str, onnx.NodeProto],
    depth: int = 0,
    memo: dict[str, bool] | None = None,
) -> bool:
    """Whether ``tensor`` is computed from initializers only (a stored weight)."""
    memo = {} if memo is None else memo
    if tensor in inits:
        return True
    if tensor in memo:
        return memo[tensor]
    node = producer.get(tensor)
    if node is None or depth > 64 or node.op_type not in _WEIGHT_PATH_OPS:
        return False
    memo[tensor] = all(_constant(t, inits, producer, depth + 1, memo) for t in node.input if t)
    return memo[tensor]


def callable_size(fn: Callable[..., object]) -> int | None:
    """Bytes of a callable teacher pickled (a bound method pickles its model, e.g. the trees
    of a gradient-boosting classifier); None when it cannot be pickled."""
    import pickle

    try:
        return len(pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return None
