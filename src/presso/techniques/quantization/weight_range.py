"""Per-layer 7-bit weights for dynamic int8 where ONNX Runtime's int8 products saturate.

Without VNNI, ORT's u8 x s8 kernel adds each pair of products in int16 with saturation
(``presso.runtime.cpu``). What saturates is the raw u8 activation (zero point included)
times the s8 weight, so the layers that suffer are those whose inputs are centred: their
zero point sits near the middle of 0..255 and every product is large. Emulated on
all-MiniLM-L6-v2 (calibration activations): the attention output projections lose 2-57x
more to saturation than to rounding, the feed-forward layers nothing. ORT's remedy,
``reduce_range``, gives *every* layer 7-bit weights ([-64, 64]: no pair can exceed
2 x 255 x 64 = 32,640), which costs the layers that never saturate. Here each layer gets
the weights whose emulated error on its calibration activations is smaller, and the
model keeps running on ORT alone: the 7-bit layers are ORT's own reduce-range
quantization of those weights, spliced into its full-range model (same graph, same
initializer names, other values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from presso.runtime.int8_gemm import dynamic_matmul, quantize_s8_columns
from presso.runtime.onnx_files import save_onnx
from presso.techniques.quantization.activations import per_call_inputs

_ROWS_PER_CALL = 32  # rows of each call the error is computed on (the range uses all rows)
_MIN_GAIN = 0.05  # 7-bit weights for a layer only if they cut its emulated error by at least 5%
# ORT's quantize_dynamic names a quantized weight's initializers after the float weight.
_SUFFIXES = ("_quantized", "_scale", "_zero_point")


def targets(model) -> list:
    """Nodes whose weights dynamic int8 quantizes for the u8 x s8 GEMM: MatMul with a 2-D
    float initializer, and the fused Attention's QKV weight (ORT's QAttention)."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type in ("MatMul", "Attention")
        and len(n.input) > 1
        and n.input[1] in inits
        and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        and len(inits[n.input[1]].dims) == 2
    ]


def emulated_error(
    calls: list[np.ndarray], w: np.ndarray, reduce_range: bool, saturating: bool, seed: int = 0
) -> float:
    """Squared error of ORT's dynamic int8 ``x @ w`` against float over sampled rows of each call."""
    rng = np.random.default_rng(seed)
    qw = quantize_s8_columns(w, reduce_range)
    err = 0.0
    for x in calls:
        rows = x[rng.choice(len(x), min(_ROWS_PER_CALL, len(x)), replace=False)]
        got = dynamic_matmul(
            rows, w, saturating=saturating, lo=float(x.min()), hi=float(x.max()), quantized_w=qw
        )
        err += float(np.sum((rows @ w - got) ** 2))
    return err


def choose_weight_ranges(src: Path, feeds, saturating: bool, log=lambda _m: None) -> list[dict]:
    """One row per quantized layer: ``weights`` "7-bit" where that cuts the emulated int8
    error of the kernel (``saturating`` or not) by at least 5%, else "8-bit". Without
    saturation 7 bits only make the grid coarser: every layer keeps 8, nothing is read."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    nodes = targets(model)
    if not saturating or not nodes:
        return [{"node": n.name, "weight": n.input[1], "weights": "8-bit"} for n in nodes]
    inits = {i.name: i for i in model.graph.initializer}
    acts = per_call_inputs(src, sorted({n.input[0] for n in nodes}), feeds)
    rows = []
    for i, node in enumerate(nodes):
        log(f"int8: weight range, layer {i + 1}/{len(nodes)}")
        w = numpy_helper.to_array(inits[node.input[1]])
        full = emulated_error(acts[node.input[0]], w, False, saturating, seed=i)
        seven = emulated_error(acts[node.input[0]], w, True, saturating, seed=i)
        ratio = seven / max(full, 1e-30)
        rows.append(
            {
                "node": node.name,
                "weight": node.input[1],
                "weights": "7-bit" if ratio <= 1 - _MIN_GAIN else "8-bit",
                "error_ratio_7bit": round(ratio, 4),
            }
        )
    return rows


def splice(full: Path, reduced: Path, weights: list[str], dst: Path) -> list[str]:
    """Write ``full`` (ORT's full-range quantization) with the quantized initializers of
    ``weights`` taken from ``reduced`` (its reduce-range quantization of the same graph)
    into ``dst``; returns the weights spliced (those quantized in both)."""
    import onnx

    model, other = onnx.load(str(full)), onnx.load(str(reduced))
    theirs = {i.name: i for i in other.graph.initializer}
    mine = {i.name: i for i in model.graph.initializer}
    done = []
    for w in weights:
        names = [w + s for s in _SUFFIXES]
        if all(n in mine and n in theirs for n in names):
            for n in names:
                mine[n].CopyFrom(theirs[n])
            done.append(w)
    save_onnx(model, dst)
    return done
