"""Weight-only int4: weights stored as packed 4-bit integers, activations stay float.

Each weighted layer's float initializer is replaced by an INT4 initializer (two values a
byte, so the file really shrinks) plus its scales, and an ONNX ``DequantizeLinear``
(opset 21: int4 types and ``block_size``) that restores the float weight at run time.
MatMul weights are quantized per group of ``group_size`` input features (ONNX Runtime
fuses DequantizeLinear + MatMul into its 4-bit ``MatMulNBits`` kernel); Gemm weights per
group as well; Conv weights per output channel. The math is presso's own quantizer
(``quantizers.py``), so the stored integers equal ``presso.fake_quantize``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError
from presso.runtime.session import mark_session_config
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.quantization.config import AUTO_GROUP, Int4Config
from presso.techniques.quantization.packing import pack_int4
from presso.techniques.quantization.quantizers import QuantParams, compute_qparams, dequantize, quantize

INT4_OPSET = 21
# With QDQ handling on (the default), ONNX Runtime keeps a weight's DequantizeLinear and
# runs it on every call (digits int4: 97 us vs 17 us); with it off, the weight is
# constant-folded once at load and the model runs at fp32 speed from a 6x smaller file.
WEIGHT_ONLY_SESSION = {"session.disable_quant_qdq": "1"}


@dataclass
class _Plan:
    """How one node's weight is stored: transpose into (rows, K), group along K."""

    node: str
    op: str
    weight: str
    transposed: bool  # the initializer is (K, N): quantize its transpose
    group: int | None  # None: per output channel


# Operand that holds the weight: MatMul/Gemm/Conv multiply by input 1; an embedding
# table (Gather) is input 0, indexed by token ids.
_WEIGHT_SLOT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}


def float_weight_plans(model, keep: set[str]) -> list[tuple[str, str, str]]:
    """(node, op, weight initializer) of MatMul/Gemm/Conv nodes and embedding lookups
    (Gather of a 2-D table) with a float weight of their own."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    out = []
    for node in model.graph.node:
        slot = _WEIGHT_SLOT.get(node.op_type)
        if slot is None or node.name in keep or len(node.input) < 2:
            continue
        w = inits.get(node.input[slot])
        if w is None or w.data_type != 1 or uses.get(w.name, 0) != 1:
            continue  # not a float constant of this node alone
        if node.op_type != "Conv" and len(w.dims) != 2:
            continue
        if node.op_type == "Gather" and any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue  # not a row lookup
        out.append((node.name, node.op_type, w.name))
    return out


def to_opset(model, opset: int):
    """``model`` at ``opset`` or later (int4/uint4 tensors need opset 21)."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return model if current >= opset else version_converter.convert_version(model, opset)


def _plan(model, cfg: Int4Config, keep: set[str]) -> list[_Plan]:
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    plans = []
    for name, op, weight in float_weight_plans(model, keep):
        if op == "Conv":
            plans.append(_Plan(name, op, weight, False, None))
            continue
        trans_b = any(a.name == "transB" and a.i == 1 for a in nodes[name].attribute)
        # Rows of the stored layout are outputs (Gemm with transB, embedding rows); a MatMul
        # weight (K, N) is quantized through its transpose. Groups run along the other axis.
        transposed = not ((op == "Gemm" and trans_b) or op == "Gather")
        dims = inits[weight].dims
        k = dims[0] if transposed else dims[1]
        group = AUTO_GROUP if cfg.group_size == "auto" else cfg.group_size
        if k % group:
            if cfg.group_size != "auto":
                raise PressoError(
                    f"The 'group_size' option of stage 'int4' ({group}) does not divide the {k} input "
                    f"features of layer '{name}'. Choose a divisor of {k}, or keep the layer "
                    "float with keep_float."
                )
            group = None  # "auto": where 32 does not divide, one scale per output channel
        plans.append(_Plan(name, op, weight, transposed, group))
    return plans


def _quantize_weight(w: np.ndarray, plan: _Plan, symmetric: bool, bits: int = 4,
                     grid: QuantParams | None = None):
    """(ints in ONNX layout, scales, zero points or None, DQ axis, block size, dequantized w).

    ``grid`` (scales in the (outputs, K) layout, e.g. learned by QAT) replaces min-max."""
    t = torch.from_numpy(np.array(w.T if plan.transposed else w))  # (outputs, K...)
    if grid is not None:
        plan = _Plan(plan.node, plan.op, plan.weight, plan.transposed, grid.group_size)
        qp = grid
    if plan.group is None:
        qp = qp if grid is not None else compute_qparams(t, bits=bits, symmetric=symmetric, axis=0)
        axis, block = 0, None
    else:
        qp = qp if grid is not None else compute_qparams(t, bits=bits, symmetric=symmetric,
                                                         group_size=plan.group)
        axis, block = 1, plan.group  # scales (outputs, K/g): blocks along K
    q_t = quantize(t, qp)
    deq = dequantize(q_t, qp).numpy()
    q, scale, zp = q_t.numpy(), qp.scale.numpy(), qp.zero_point.numpy()
    if plan.transposed:  # ONNX layout is (K, N): transpose back, the K axis becomes 0
        q, deq = q.T, deq.T
        if block:
            scale, zp, axis = scale.T, zp.T, 0
        else:
            axis = 1
    zp = None if symmetric else np.ascontiguousarray(zp)
    return np.ascontiguousarray(q), np.ascontiguousarray(scale, np.float32), zp, axis, block, deq


def _int_tensor(name: str, values: np.ndarray, signed: bool, bits: int):
    from onnx import TensorProto, helper, numpy_helper

    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name)
    kind = TensorProto.INT4 if signed else TensorProto.UINT4
    packed = pack_int4(values.reshape(-1).astype(np.int8 if signed else np.uint8), signed=signed)
    return helper.make_tensor(name, kind, list(values.shape), packed.tobytes(), raw=True)


_BITS = {"int4": 4, "int8": 8}


def write_int4(src: Path, dst: Path, cfg: Int4Config, precision: dict[str, str] | None = None,
               grids: dict[str, QuantParams] | None = None) -> list[dict]:
    """Rewrite ``src`` with 4-bit weights into ``dst``; returns one row per layer.

    ``precision`` overrides single nodes: ``"fp32"`` leaves the weight float, ``"int8"``
    stores it in 8 bits with the same granularity (mixed precision). ``grids`` maps a
    weight initializer to the 4-bit scales to store it with (QAT's learned ones; the
    weight must already lie on that grid for the storage to be lossless).
    """
    import onnx
    from onnx import helper, numpy_helper

    precision = precision or {}
    model = to_opset(onnx.load(str(src)), INT4_OPSET)
    plans = _plan(model, cfg, {n for n, p in precision.items() if p == "fp32"})
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, rows = [], []
    for plan in plans:
        label = precision.get(plan.node, "int4")
        bits = _BITS[label]
        w = numpy_helper.to_array(inits[plan.weight])
        grid = (grids or {}).get(plan.weight) if bits == 4 else None
        q, scale, zp, axis, block, deq = _quantize_weight(w, plan, cfg.symmetric, bits, grid)
        model.graph.initializer.remove(inits[plan.weight])
        q_name, s_name = f"{plan.weight}_{label}", f"{plan.weight}_scale"
        model.graph.initializer.extend([_int_tensor(q_name, q, cfg.symmetric, bits),
                                        numpy_helper.from_array(scale, s_name)])
        inputs = [q_name, s_name]
        if zp is not None:
            z_name = f"{plan.weight}_zero_point"
            model.graph.initializer.append(_int_tensor(z_name, zp, False, bits))
            inputs.append(z_name)
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        new_nodes.append(helper.make_node("DequantizeLinear", inputs, [plan.weight],
                                          name=f"{plan.node}/weight_{label}", **attrs))
        err = float(np.linalg.norm(deq - w) / max(float(np.linalg.norm(w)), 1e-12))
        rows.append({"node": plan.node, "op": plan.op, "precision": label,
                     "granularity": f"group {block}" if block else "per channel",
                     "parameters": int(w.size), "relative_error": round(err, 6)})
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)  # dequantize before any consumer
    mark_session_config(model, WEIGHT_ONLY_SESSION)
    onnx.save(model, str(dst))
    return rows


def accuracy_aware(onnx_path: Path, cfg, ctx: StageContext, name: str, writer,
                   fallbacks: tuple[str, ...] = ("fp32",)) -> StageResult:
    """Write ``onnx_path`` with ``writer``; if the budget breaks, the most sensitive layers
    fall back (``mixed.search``). Shared by the weight-storage techniques.

    ``writer(src, dst, cfg, precision)`` writes the model with ``precision[node]`` (one of
    ``fallbacks``) overriding the technique's own precision, and returns per-layer rows.
    """
    import onnx

    from presso.techniques.quantization.graph import weighted_nodes
    from presso.techniques.quantization.mixed import FP32, annotate, search

    layers_of: dict[str, list[dict]] = {}

    def attempt(variant: str, precision: dict[str, str]) -> Candidate:
        dst = ctx.workdir / f"{variant.replace('/', '_')}.onnx"
        ctx.log(f"{name}: writing weights ({variant})")
        keep = sorted(n for n, p in precision.items() if p == FP32)
        options = {"keep_float": keep}
        wider = {n: p for n, p in precision.items() if p != FP32}
        if wider:
            options["precision"] = wider
        cand = Candidate(variant, dst, options=options)
        try:
            layers_of[variant] = writer(onnx_path, dst, cfg, precision)
            cand.score = ctx.score(dst)
        except PressoError:
            raise  # the user's options do not fit the model: say so, do not retry
        except Exception as exc:  # a graph this writer or ORT cannot handle is a failed variant
            msg = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
            cand.path, cand.note = None, f"{name} failed: {msg[:200]}"
        return cand

    base = {n: FP32 for n in cfg.keep_float}
    base.update(getattr(cfg, "precision", None) or {})
    first = attempt(name, base)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    layers = [n for n, _, _ in float_weight_plans(proto, set(base))]
    found = search(first, layers, base, attempt, list(fallbacks), name, ctx)
    tried = [first, *found.tried]
    cand = found.chosen
    ranked = [cand] if cand is not None else []
    if cand is not None:
        cand.latency_ms = ctx.time_models({cand.name: cand.path})[cand.name]
    rows = annotate(layers_of.get(cand.name, []) if cand else [], found)
    weighted = weighted_nodes(proto)
    kept = sorted(set(weighted) - {row["node"] for row in rows})
    notes = [f"{len(rows)} layers store {name} weights; presso.load() runs them with ONNX Runtime "
             "session option session.disable_quant_qdq=1 (recorded in the model's metadata), which "
             "restores the float weights once at load: set it too when loading model.onnx "
             "with plain onnxruntime, or the weights are rebuilt on every call"] + (
        [f"{len(kept)} weighted layers stay fp32: {', '.join(kept[:6])}" + (" ..." if len(kept) > 6 else "")]
        if kept else [])
    if found.precision:
        notes.append(f"mixed precision: {len(found.precision)} most sensitive layer(s) fell back "
                     f"({', '.join(f'{n} -> {p}' for n, p in list(found.precision.items())[:4])}"
                     f"{' ...' if len(found.precision) > 4 else ''}); sensitivity of every layer is "
                     "in the per-layer table")
    fp32_rows = [{"node": n, "precision": FP32,
                  **({"sensitivity": round(found.sensitivity[n], 6)} if n in found.sensitivity else {}),
                  **({"reason": annotate([{"node": n}], found)[0].get("reason", "kept float by the recipe")}
                     if n in found.precision or n in base else {})}
                 for n in kept]
    return StageResult(ranked=ranked, tried=tried, notes=notes, layers=rows + fp32_rows)


def quantize_int4(onnx_path: Path, cfg: Int4Config, ctx: StageContext) -> StageResult:
    return accuracy_aware(onnx_path, cfg, ctx, "int4", write_int4, fallbacks=("int8", "fp32"))
