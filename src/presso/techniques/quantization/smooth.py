"""SmoothQuant-style outlier smoothing for dynamic int8, chosen per layer by simulation.

A few hidden channels of transformer activations carry values 10-30x the others (the
input of BERT's feed-forward layer, measured on all-MiniLM-L6-v2: max 28 vs a median
channel max near 2). Per-tensor activation quantization then spends its 256 levels on
them. SmoothQuant (Xiao et al. 2023) divides input channel j by ``s_j = max|X_j|^a /
max|W_j|^(1-a)`` and multiplies row j of the weight by it: the same product in float,
flatter activations for the quantizer.

ONNX Runtime's dynamic kernels quantize weights per output channel, where scaling rows
can make the weight grid coarser, so smoothing does not always pay (on MiniLM it helps
the feed-forward input and hurts the others, measured). Each MatMul therefore gets the
``a`` that minimises the int8 output error ``||XW - ORT(X, W)||`` on calibration
activations, or no smoothing when none beats leaving it alone. ``ORT(X, W)`` is ORT's
dynamic MatMul as the CPU at hand computes it (``presso.runtime.int8_gemm``): exact sums
with VNNI; without it, pairs of u8 x s8 products saturate at int16, an error that depends
on the raw integers and that smoothing can raise or cut. Only MatMuls fed by a LayerNorm
are considered (see ``_AFTER``). The division is a Mul node before the MatMul (the
LayerNorm output also feeds the residual branch, so it cannot fold into the LayerNorm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from presso.runtime.cpu import cpu_features
from presso.runtime.int8_gemm import dynamic_matmul, quantize_s8_columns
from presso.runtime.onnx_files import save_onnx
from presso.techniques.quantization.activations import CALLS, per_call_inputs

ALPHAS = (0.3, 0.5, 0.7)  # SmoothQuant's range; 0.85 cut the mean error but raised the worst row (MiniLM)
_CALLS = CALLS  # batch-1 calls whose activations are simulated (dynamic ranges are per call)
_ROWS_PER_CALL = 32  # rows of each call the error is computed on (the range uses all rows)
_MIN_GAIN = 0.05  # smooth a layer only if it cuts the simulated error by at least 5%
# Inputs that carry the outlier channels (LayerNorm outputs, as in the SmoothQuant paper).
# Each smoothed layer costs a Mul over its input at run time: smoothing every MatMul of
# MiniLM cut the error further but cost 3% latency, more than ORT's plain dynamic int8
# is worth against presso's (measured); the LayerNorm-fed feed-forward inputs carry most
# of the gain (simulated error x0.05-0.08) at a third of that cost.
_AFTER = {
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
}


def simulated_error(
    calls: list[np.ndarray],
    rows: list[np.ndarray],
    w: np.ndarray,
    s: np.ndarray | None,
    saturating: bool | None = None,
    reduce_range: bool = False,
) -> float:
    """Squared int8 output error of ``x @ w`` over the sampled rows of each call, with the
    input divided by ``s`` and the weight rows multiplied by it (None: unsmoothed).

    ``saturating``: whether ORT's u8 x s8 kernel saturates pairs of products (default: as
    it does on this CPU); ``reduce_range``: 7-bit weights, as the dynamic-reduce-range variant.
    """
    saturating = cpu_features().int8_saturates if saturating is None else saturating
    ws = w if s is None else w * s[:, None]
    qw = quantize_s8_columns(ws, reduce_range)
    err = 0.0
    for x, idx in zip(calls, rows, strict=True):
        # The range comes from the whole call's tensor; the error from the sampled rows.
        lo, hi = (float(x.min()), float(x.max())) if s is None else _range(x, s)
        xr = x[idx]
        got = dynamic_matmul(
            xr if s is None else xr / s, ws, saturating=saturating, lo=lo, hi=hi, quantized_w=qw
        )
        err += float(np.sum((xr @ w - got) ** 2))
    return err


def _range(x: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    # min/max of x / s per column, without materialising x / s: s > 0
    return float((x.min(0) / s).min()), float((x.max(0) / s).max())


def choose_scales(
    calls: list[np.ndarray],
    w: np.ndarray,
    seed: int = 0,
    saturating: bool | None = None,
    reduce_range: bool = False,
) -> tuple[np.ndarray | None, float | None, float]:
    """(smoothing scales or None, alpha or None, error ratio vs unsmoothed) for one MatMul."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(len(x), min(_ROWS_PER_CALL, len(x)), replace=False) for x in calls]
    base = simulated_error(calls, rows, w, None, saturating, reduce_range)
    amax = np.max([np.abs(x).max(0) for x in calls], axis=0)  # (K,)
    wmax = np.abs(w).max(1)  # (K,)
    best: tuple[np.ndarray | None, float | None, float] = (None, None, 1.0)
    for alpha in ALPHAS:
        s = (np.maximum(amax, 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)).astype(np.float32)
        ratio = simulated_error(calls, rows, w, s, saturating, reduce_range) / max(base, 1e-30)
        if ratio < best[2]:
            best = (s, alpha, ratio)
    return best if best[2] <= 1 - _MIN_GAIN else (None, None, best[2])


def smooth_matmuls(
    src: Path,
    dst: Path,
    feeds,
    log=lambda _m: None,
    saturating: bool | None = None,
    reduce_range: bool = False,
) -> list[dict]:
    """Write ``src`` with per-layer smoothing into ``dst``; one row per MatMul considered.

    ``feeds``: batch-1 input dicts (the calibration rows), at most ``_CALLS`` are used;
    ``saturating`` / ``reduce_range``: the int8 kernel and weights the scales are chosen
    for (see :func:`simulated_error`).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    targets = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
        and len(inits[n.input[1]].dims) == 2
        and producer.get(n.input[0], "") in _AFTER
    ]
    if not targets:
        save_onnx(model, dst)
        return []
    acts = per_call_inputs(src, sorted({n.input[0] for n in targets}), feeds, _CALLS)
    rows, muls = [], []
    for i, node in enumerate(targets):
        log(f"int8: smoothing, layer {i + 1}/{len(targets)}")
        w = numpy_helper.to_array(inits[node.input[1]])
        s, alpha, ratio = choose_scales(
            acts[node.input[0]], w, seed=i, saturating=saturating, reduce_range=reduce_range
        )
        rows.append(
            {
                "node": node.name,
                "smoothing": "none" if s is None else f"alpha {alpha}",
                "simulated_error_ratio": round(ratio, 4),
            }
        )
        if s is None:
            continue
        inits[node.input[1]].CopyFrom(
            numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1])
        )
        inv = f"{node.name}/smooth_inverse_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        out = f"{node.name}/smoothed_input"
        muls.append((node, helper.make_node("Mul", [node.input[0], inv], [out], name=f"{node.name}/smooth")))
        node.input[0] = out
    before = {node.name: mul for node, mul in muls}
    nodes = []
    for node in model.graph.node:  # each Mul right before its MatMul keeps the graph sorted
        nodes += [before[node.name], node] if node.name in before else [node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    save_onnx(model, dst)
    return rows
