"""Sparse storage of pruned weights in an ONNX file, so the file shrinks with the sparsity.

Each float weight initializer (of a MatMul / Gemm / Conv / embedding Gather, see
``float_weight_plans``) whose fraction of zeros is at least ``min_sparsity`` is replaced by

- ``<w>_mask``: 1 bit per weight, packed 8 a byte, lowest bit first (UINT8, ``ceil(n / 8)``);
- ``<w>_values``: a leading 0 then the non-zero weights in row-major order (FLOAT);

and nodes that rebuild the dense weight with standard ONNX ops (all inputs are constants,
so ONNX Runtime folds them into one initializer when the session is created)::

    bits  = Gather(lut, Cast(mask, int32))     # (ceil(n/8), 8) uint8 in {0, 1}; lut is (256, 8)
    keep  = Cast(Slice(Reshape(bits, [-1]), 0, n), int32)      # (n,)
    idx   = CumSum(keep) * keep                # 1-based index into values where kept, else 0
    w     = Reshape(Gather(values, idx), shape)                 # values[0] = 0

Bytes per weight: ``4 * (1 - sparsity) + 1/8`` instead of 4 (90% sparse: 0.13x); for an
INT8 weight (an integer initializer with zero point 0 into a DequantizeLinear, MatMulInteger
or ConvInteger), the integers are stored the same way, ``(1 - sparsity) + 1/8`` bytes
instead of 1. Layers less sparse than ``min_sparsity`` stay dense. Zeros are stored as +0.0
(a -0.0 comes back as +0.0); every other value comes back bit for bit.
"""

from __future__ import annotations

import numpy as np

from presso.errors import PressoError
from presso.runtime.onnx_files import save_onnx
from presso.techniques.graph import float_weight_plans, input_uses, to_opset

SPARSE_OPSET = 13  # Slice / Reshape / CumSum with tensor inputs
_LUT = "presso_sparse_bit_lut"


def pack_mask(keep: np.ndarray) -> np.ndarray:
    """Bool mask -> uint8 bytes, 8 positions a byte, position ``i`` at bit ``i % 8`` of byte ``i // 8``."""
    return np.packbits(np.asarray(keep, dtype=bool).reshape(-1), bitorder="little")


def _lut() -> np.ndarray:
    """(256, 8) uint8: row ``b`` holds the bits of byte ``b``, lowest first."""
    return np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")


def _sparse_tensors(w: np.ndarray, weight: str, node: str):
    """Initializers and nodes that rebuild ``w`` (zeros as +0.0) under the name ``weight``."""
    from onnx import TensorProto, helper, numpy_helper

    keep = (w != 0).reshape(-1)  # (n,)
    values = np.concatenate([np.zeros(1, w.dtype), w.reshape(-1)[keep]]).astype(w.dtype)  # (1 + kept,)
    p = f"{weight}_sparse"
    tensors = [
        numpy_helper.from_array(pack_mask(keep), f"{weight}_mask"),
        numpy_helper.from_array(values, f"{weight}_values"),
        numpy_helper.from_array(np.array([w.size], dtype=np.int64), f"{p}_n"),
        numpy_helper.from_array(np.array(w.shape, dtype=np.int64), f"{p}_shape"),
    ]
    nodes = [
        helper.make_node(
            "Cast", [f"{weight}_mask"], [f"{p}_bytes"], name=f"{node}/sparse_bytes", to=TensorProto.INT32
        ),
        helper.make_node("Gather", [_LUT, f"{p}_bytes"], [f"{p}_bits"], name=f"{node}/sparse_bits", axis=0),
        helper.make_node("Reshape", [f"{p}_bits", f"{_LUT}_flat"], [f"{p}_flat"], name=f"{node}/sparse_flat"),
        helper.make_node(
            "Slice", [f"{p}_flat", f"{_LUT}_zero", f"{p}_n"], [f"{p}_keep8"], name=f"{node}/sparse_trim"
        ),
        helper.make_node(
            "Cast", [f"{p}_keep8"], [f"{p}_keep"], name=f"{node}/sparse_keep", to=TensorProto.INT32
        ),
        helper.make_node(
            "CumSum", [f"{p}_keep", f"{_LUT}_zero32"], [f"{p}_cum"], name=f"{node}/sparse_cumsum"
        ),
        helper.make_node("Mul", [f"{p}_cum", f"{p}_keep"], [f"{p}_idx"], name=f"{node}/sparse_index"),
        helper.make_node(
            "Gather", [f"{weight}_values", f"{p}_idx"], [f"{p}_dense"], name=f"{node}/sparse_values", axis=0
        ),
        helper.make_node("Reshape", [f"{p}_dense", f"{p}_shape"], [weight], name=f"{node}/sparse_weight"),
    ]
    return tensors, nodes


def _shared_tensors():
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(_lut(), _LUT),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{_LUT}_flat"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), f"{_LUT}_zero"),
        numpy_helper.from_array(np.array(0, dtype=np.int32), f"{_LUT}_zero32"),
    ]


# op -> (input index of the integer weight, input index of its zero point)
_INT8_WEIGHT_INPUTS = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3), "ConvInteger": (1, 3)}


def _int8_weights(model, keep: set[str]) -> list[tuple[str, str, str]]:
    """(node, op, initializer) of INT8/UINT8 constant weights with a zero point of 0 (or none),
    so that integer 0 is float 0: quantized pruned weights, dequantized by a DequantizeLinear
    (static QDQ, weight-only) or consumed by a MatMulInteger / ConvInteger (dynamic int8)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses = input_uses(model.graph)
    out = []
    for node in model.graph.node:
        if node.op_type not in _INT8_WEIGHT_INPUTS or node.name in keep:
            continue
        w_at, zp_at = _INT8_WEIGHT_INPUTS[node.op_type]
        q = inits.get(node.input[w_at]) if len(node.input) > w_at else None
        if q is None or q.data_type not in (2, 3) or uses.get(q.name, 0) != 1:  # UINT8, INT8
            continue
        zp_name = node.input[zp_at] if len(node.input) > zp_at else ""
        zp = inits.get(zp_name) if zp_name else None
        if zp_name and (zp is None or numpy_helper.to_array(zp).any()):
            continue  # integer 0 is not float 0 here
        out.append((node.name, node.op_type, q.name))
    return out


def _nbytes(tensor) -> int:
    from onnx import numpy_helper

    return len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes


def write_sparse(src, dst, min_sparsity: float = 0.5, keep: set[str] | frozenset = frozenset()) -> list[dict]:
    """Rewrite the ONNX model ``src`` into ``dst`` with its sparse weights stored as bitmask
    + non-zero values; returns one row per weighted layer (sparse or not).

    Quantized weights (an INT8/UINT8 initializer into a ``DequantizeLinear``, ``MatMulInteger``
    or ``ConvInteger`` with zero point 0 or none, as presso's symmetric static, dynamic and
    weight-only int8 write them) are stored the same way with 1-byte values; their rows have
    that node's op.

    ``keep`` names nodes whose weights stay dense whatever their sparsity.

    Examples
    --------
    >>> rows = write_sparse("pruned.onnx", "sparse.onnx", min_sparsity=0.5)  # doctest: +SKIP
    >>> rows[0]["storage"], rows[0]["stored_bytes"] / rows[0]["dense_bytes"]  # doctest: +SKIP
    ('bitmask', 0.131)
    """
    import onnx
    from onnx import numpy_helper

    if (
        isinstance(min_sparsity, bool)
        or not isinstance(min_sparsity, (int, float))
        or not 0 < min_sparsity <= 1
    ):
        raise PressoError(
            f"The 'min_sparsity' option must be a number in (0, 1] (the fraction of zeros from which "
            f"a layer is stored sparse). Got {min_sparsity!r} instead."
        )
    model = onnx.load(str(src))
    if (
        model.opset_import
        and next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < SPARSE_OPSET
    ):
        model = to_opset(model, SPARSE_OPSET)
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, rows, sparse = [], [], []
    plans = float_weight_plans(model, set(keep)) + _int8_weights(model, set(keep))
    for node, op, weight in plans:
        w = numpy_helper.to_array(inits[weight])
        sparsity = float((w == 0).mean()) if w.size else 0.0
        row = {"node": node, "op": op, "sparsity": round(sparsity, 6), "dense_bytes": int(w.nbytes)}
        if sparsity < min_sparsity:
            rows.append({**row, "storage": "dense", "stored_bytes": int(w.nbytes)})
            continue
        tensors, nodes = _sparse_tensors(w, weight, node)
        sparse.append(inits[weight])
        model.graph.initializer.extend(tensors)
        new_nodes.extend(nodes)
        rows.append({**row, "storage": "bitmask", "stored_bytes": sum(_nbytes(t) for t in tensors[:2])})
    if sparse:
        gone = {init.name for init in sparse}
        for init in sparse:
            model.graph.initializer.remove(init)
        for inp in [i for i in model.graph.input if i.name in gone]:  # IR < 4 lists initializers as inputs
            model.graph.input.remove(inp)
        model.graph.initializer.extend(_shared_tensors())
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(new_nodes + nodes)  # weights rebuilt before any consumer
    save_onnx(model, dst)
    return rows
