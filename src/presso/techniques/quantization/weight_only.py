"""Weight-only quantization: weights stored small, activations stay float.

Each weighted layer's float initializer is replaced by a small one plus the ONNX nodes
that restore the float weight at run time (ONNX Runtime folds them once at load):

- integer schemes (``int``, ``power-of-two``; 2-8 bits): INT4/UINT4 initializers packed
  two values a byte for ``bits <= 4`` (2- and 3-bit values in 4-bit containers), INT8/UINT8
  for 5-8 bits, with their scales, then ``DequantizeLinear`` (opset 21: int4 types and
  ``block_size``). MatMul and Gemm weights are quantized per group of ``group_size`` input
  features (ONNX Runtime fuses DequantizeLinear + MatMul into its 4-bit ``MatMulNBits``
  kernel), Conv weights per output channel;
- ``binary``: values in {-1, +1} in an INT4 initializer, one scale (the mean ``|w|``) per
  output channel, restored by the same ``DequantizeLinear``;
- ``float16`` / ``bfloat16``: a half-precision initializer followed by ``Cast`` to float.

The math is presso's own quantizer (``quantizers.py``: ``quantize``, ``binarize``,
``to_half``), so the weights ONNX Runtime computes with equal presso's bit for bit.
AdaRound and bias correction (``adaround.py``) change which integers are stored and the
layers' biases, from the layers' inputs on the calibration rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError
from presso.runtime.onnx_files import save_onnx
from presso.runtime.session import mark_session_config
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.graph import float_weight_plans, to_opset
from presso.techniques.quantization.config import AUTO_GROUP, INT_SCHEMES, Int4Config, WeightOnlyConfig
from presso.techniques.quantization.packing import pack_int4
from presso.techniques.quantization.quantizers import (
    QuantParams,
    binarize,
    compute_qparams,
    dequantize,
    quantize,
    to_half,
)
from presso.techniques.quantization.search import INT4

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


def _plan(model, group_size, keep: set[str], stage: str = "int4") -> list[_Plan]:
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
        group = AUTO_GROUP if group_size == "auto" else group_size
        if k % group:
            if group_size != "auto":
                raise PressoError(
                    f"The 'group_size' option of stage '{stage}' ({group}) does not divide the {k} input "
                    f"features of layer '{name}'. Choose a divisor of {k}, or keep the layer "
                    "float with keep_float."
                )
            group = None  # "auto": where 32 does not divide, one scale per output channel
        plans.append(_Plan(name, op, weight, transposed, group))
    return plans


@dataclass(frozen=True)
class _Precision:
    """How a layer's weight is stored: ``label`` as in the per-layer rows."""

    label: str  # "int3", "binary", "float16", ...
    kind: str  # "int", "binary" or "half"
    bits: int = 4
    power_of_two: bool = False


def _precision(label: str, cfg: WeightOnlyConfig) -> _Precision:
    if label.startswith("int"):
        return _Precision(label, "int", int(label[3:]), cfg.scheme == "power-of-two")
    return _Precision(label, "binary" if label == "binary" else "half")


def stage_precision(cfg: WeightOnlyConfig) -> str:
    """The precision label of a stage's layers: ``int3``, ``binary``, ``float16`` ..."""
    return f"int{cfg.bits}" if cfg.scheme in INT_SCHEMES else cfg.scheme


def _rows_view(w: np.ndarray, plan: _Plan) -> torch.Tensor:
    """The weight as (outputs, K...), C-contiguous: MatMul's (K, N) initializer is transposed."""
    return torch.from_numpy(np.array(w.T if plan.transposed else w, order="C"))  # a writable copy


def _grid(t: torch.Tensor, plan: _Plan, prec: _Precision, symmetric: bool) -> QuantParams:
    if plan.group is None:
        return compute_qparams(t, bits=prec.bits, symmetric=symmetric, axis=0, power_of_two=prec.power_of_two)
    return compute_qparams(
        t, bits=prec.bits, symmetric=symmetric, group_size=plan.group, power_of_two=prec.power_of_two
    )


def _quantize_weight(
    w: np.ndarray,
    plan: _Plan,
    symmetric: bool,
    bits: int = 4,
    grid: QuantParams | None = None,
    power_of_two: bool = False,
    learned: torch.Tensor | None = None,
):
    """(ints in ONNX layout, scales, zero points or None, DQ axis, block size, dequantized w).

    ``grid`` (scales in the (outputs, K) layout, e.g. learned by QAT) replaces min-max;
    ``learned`` (integers in that layout, e.g. AdaRound's) replaces nearest rounding."""
    t = _rows_view(w, plan)  # (outputs, K...)
    if grid is not None:
        plan = _Plan(plan.node, plan.op, plan.weight, plan.transposed, grid.group_size)
        qp = grid
    else:
        qp = _grid(t, plan, _Precision(f"int{bits}", "int", bits, power_of_two), symmetric)
    axis, block = (0, None) if plan.group is None else (1, plan.group)  # blocks along K
    q_t = quantize(t, qp) if learned is None else learned.reshape(t.shape)
    deq = dequantize(q_t, qp).numpy()
    q, scale, zp = q_t.numpy(), qp.scale.numpy(), qp.zero_point.numpy()
    if plan.transposed:  # ONNX layout is (K, N): transpose back, the K axis becomes 0
        q, deq = q.T, deq.T
        if block:
            scale, zp, axis = scale.T, zp.T, 0
        else:
            axis = 1
    zero = None if symmetric else np.ascontiguousarray(zp)
    return np.ascontiguousarray(q), np.ascontiguousarray(scale, np.float32), zero, axis, block, deq


def _int_tensor(name: str, values: np.ndarray, signed: bool, bits: int):
    """INT4/UINT4 (two values a byte) for ``bits <= 4``, else INT8/UINT8."""
    from onnx import TensorProto, helper, numpy_helper

    if bits > 4:
        return numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name)
    kind = TensorProto.INT4 if signed else TensorProto.UINT4
    packed = pack_int4(values.reshape(-1).astype(np.int8 if signed else np.uint8), signed=signed)
    return helper.make_tensor(name, kind, list(values.shape), packed.tobytes(), raw=True)


def _nbytes(tensor) -> int:
    from onnx import numpy_helper

    return len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes


@dataclass
class _Stored:
    """A weight's new initializers, the nodes that rebuild it, and its run-time value."""

    tensors: list
    nodes: list
    deq: np.ndarray  # float weight in the ONNX layout, as ONNX Runtime computes it
    granularity: str
    storage: str
    extra: dict = field(default_factory=dict)


def _store_int(w, plan: _Plan, prec: _Precision, cfg, grid, learned) -> _Stored:
    from onnx import helper, numpy_helper

    q, scale, zp, axis, block, deq = _quantize_weight(
        w, plan, cfg.symmetric, prec.bits, grid, prec.power_of_two, learned
    )
    q_name, s_name = f"{plan.weight}_{prec.label}", f"{plan.weight}_scale"
    tensors = [_int_tensor(q_name, q, cfg.symmetric, prec.bits), numpy_helper.from_array(scale, s_name)]
    if zp is not None:
        tensors.append(_int_tensor(f"{plan.weight}_zero_point", zp, False, prec.bits))
    attrs = {"axis": axis, **({"block_size": block} if block else {})}
    node = helper.make_node(
        "DequantizeLinear",
        [t.name for t in tensors],
        [plan.weight],
        name=f"{plan.node}/weight_{prec.label}",
        **attrs,
    )
    width = 4 if prec.bits <= 4 else 8
    storage = f"{width}-bit" + (" container" if prec.bits != width else "")
    extra = {"scales": "power of two"} if prec.power_of_two else {}
    return _Stored(tensors, [node], deq, f"group {block}" if block else "per channel", storage, extra)


def _store_binary(w, plan: _Plan) -> _Stored:
    """sign(w) in {-1, +1} (INT4) and presso's binarize() scale per output channel."""
    from onnx import helper, numpy_helper

    t = _rows_view(w, plan)  # (outputs, K...)
    b = binarize(t, axis=0)  # sign(t) * mean|t| per output channel
    scale = b.reshape(b.shape[0], -1)[:, 0].abs()  # (outputs,): exactly binarize's value
    sign = torch.where(t >= 0, 1, -1).to(torch.int8)
    q, deq = sign.numpy(), b.numpy()
    if plan.transposed:
        q, deq = q.T, deq.T
    q_name, s_name = f"{plan.weight}_binary", f"{plan.weight}_scale"
    tensors = [
        _int_tensor(q_name, np.ascontiguousarray(q), True, 4),
        numpy_helper.from_array(scale.numpy().astype(np.float32), s_name),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [q_name, s_name],
        [plan.weight],
        name=f"{plan.node}/weight_binary",
        axis=1 if plan.transposed else 0,
    )
    return _Stored(tensors, [node], np.ascontiguousarray(deq), "per channel", "4-bit container")


def _store_half(w, plan: _Plan, prec: _Precision) -> _Stored:
    """A float16 / bfloat16 copy of ``w`` (presso's to_half) and a Cast back to float."""
    from onnx import TensorProto, helper

    half = to_half(torch.from_numpy(np.array(w)), prec.label)  # float32 values on the half grid
    kind = TensorProto.FLOAT16 if prec.label == "float16" else TensorProto.BFLOAT16
    raw = half.to(torch.float16 if prec.label == "float16" else torch.bfloat16).view(torch.int16)
    name = f"{plan.weight}_{prec.label}"
    tensor = helper.make_tensor(name, kind, list(w.shape), raw.numpy().tobytes(), raw=True)
    node = helper.make_node(
        "Cast", [name], [plan.weight], name=f"{plan.node}/weight_{prec.label}", to=TensorProto.FLOAT
    )
    return _Stored([tensor], [node], half.numpy(), "none", prec.label)


@dataclass
class Calibrated:
    """What the calibration rows say about each layer, shared by every variant that the
    accuracy-aware search writes: the layers' input statistics and AdaRound's learned
    integers per (node, precision), learned once."""

    inputs: dict  # node -> adaround.LayerInputs
    groups: dict[str, int]  # node -> conv groups (1 for the rest)
    adaround: bool
    bias_correction: bool
    iters: int = 1000  # AdaRound steps per layer (adaround.steps_for)
    learned: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)

    def integers(self, plan: _Plan, prec: _Precision, w: np.ndarray, symmetric: bool):
        """AdaRound's integers (outputs, K...) for this layer at ``prec``, or None (nearest)."""
        from presso.techniques.quantization.adaround import adaround

        key = (plan.node, prec.label)
        stats = self.inputs.get(plan.node)
        if key not in self.learned:
            if (
                not self.adaround
                or prec.bits >= 8
                or stats is None
                or stats.gram is None
                or self.groups.get(plan.node, 1) != 1
            ):
                return None
            t = _rows_view(w, plan)
            t2 = t.reshape(t.shape[0], -1)  # (outputs, K)
            qp = _grid(t2 if plan.group is None else t, plan, prec, symmetric)
            self.learned[key] = adaround(t2, qp, stats.gram, iters=self.iters).reshape(t.shape)
        return self.learned[key]


def _write(
    src: Path,
    dst: Path,
    cfg: WeightOnlyConfig,
    precision: dict[str, str] | None,
    grids: dict[str, QuantParams] | None,
    *,
    stage: str,
    calib: Calibrated | None = None,
) -> list[dict]:
    import onnx
    from onnx import numpy_helper

    from presso.techniques.quantization.adaround import output_shift, subtract_from_bias

    precision = precision or {}
    own = stage_precision(cfg)
    model = to_opset(onnx.load(str(src)), INT4_OPSET)
    plans = _plan(model, cfg.group_size, {n for n, p in precision.items() if p == "fp32"}, stage)
    inits = {i.name: i for i in model.graph.initializer}
    nodes_by_name = {n.name: n for n in model.graph.node}
    new_nodes, rows = [], []
    for plan in plans:
        prec = _precision(precision.get(plan.node, own), cfg)
        w = numpy_helper.to_array(inits[plan.weight])
        row: dict[str, object] = {}
        if prec.kind == "half":
            stored = _store_half(w, plan, prec)
        elif prec.kind == "binary":
            stored = _store_binary(w, plan)
        else:
            grid = (grids or {}).get(plan.weight) if prec.label == own else None
            learned = None
            if calib is not None and calib.adaround and grid is None:
                learned = calib.integers(plan, prec, w, cfg.symmetric)
                row["rounding"] = "nearest" if learned is None else "adaround"
            stored = _store_int(w, plan, prec, cfg, grid, learned)
        model.graph.initializer.remove(inits[plan.weight])
        model.graph.initializer.extend(stored.tensors)
        new_nodes += stored.nodes
        stats = calib.inputs.get(plan.node) if calib is not None and calib.bias_correction else None
        if calib is not None and stats is not None:  # (stats implies calib; this tells mypy)
            t = _rows_view(w, plan).double()
            t = t.reshape(t.shape[0], -1)  # (outputs, K)
            delta = _rows_view(stored.deq, plan).double().reshape(t.shape) - t  # W~ - W
            shift = output_shift(delta.numpy(), stats.mean, calib.groups.get(plan.node, 1))
            rms = None
            if stats.gram is not None and calib.groups.get(plan.node, 1) == 1:
                rms = np.sqrt(
                    np.maximum(
                        ((t.float() @ torch.from_numpy(stats.gram)) * t.float()).sum(1).double().numpy(), 0
                    )
                )
            row["bias_correction"] = subtract_from_bias(model, nodes_by_name[plan.node], shift, rms)
            row["max_mean_shift"] = round(float(np.abs(shift).max()), 6)
        err = float(np.linalg.norm(stored.deq - w) / max(float(np.linalg.norm(w)), 1e-12))
        rows.append(
            {
                "node": plan.node,
                "op": plan.op,
                "precision": prec.label,
                "granularity": stored.granularity,
                "parameters": int(w.size),
                "relative_error": round(err, 6),
                "size_bytes": sum(_nbytes(t) for t in stored.tensors),
                "storage": stored.storage,
                **stored.extra,
                **row,
            }
        )
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)  # rebuild weights before any consumer
    mark_session_config(model, WEIGHT_ONLY_SESSION)  # DequantizeLinear folded once, at load
    save_onnx(model, dst)
    return rows


def write_weight_only(
    src: Path,
    dst: Path,
    cfg: WeightOnlyConfig,
    precision: dict[str, str] | None = None,
    grids: dict[str, QuantParams] | None = None,
    *,
    calib: Calibrated | None = None,
) -> list[dict]:
    """Rewrite ``src`` with the weights of ``cfg`` into ``dst``; returns one row per layer.

    ``precision`` overrides single nodes: ``"fp32"`` leaves the weight float, another
    label (``"int8"``, ``"int3"``, ``"binary"``, ``"float16"`` ...) stores it that way
    (mixed precision). ``grids`` maps a weight initializer to the scales to store it
    with at the stage's own precision (QAT's learned ones; the weight must already lie
    on that grid for the storage to be lossless). ``calib`` (from :func:`calibrate`)
    brings AdaRound's integers and the layers' mean inputs for bias correction.

    Examples
    --------
    >>> rows = write_weight_only("model.onnx", "int3.onnx", WeightOnlyConfig(bits=3))  # doctest: +SKIP
    >>> rows[0]["precision"], rows[0]["storage"]  # doctest: +SKIP
    ('int3', '4-bit container')
    """
    return _write(Path(src), Path(dst), cfg, precision, grids, stage="weight-only", calib=calib)


def _as_weight_only(cfg: Int4Config) -> WeightOnlyConfig:
    """The int4 preset; the writer reads only these two options (keep_float and precision
    reach it as ``precision``), so any config that has them works (e.g. qat's)."""
    return WeightOnlyConfig(scheme="int", bits=4, symmetric=cfg.symmetric, group_size=cfg.group_size)


def write_int4(
    src: Path,
    dst: Path,
    cfg: Int4Config,
    precision: dict[str, str] | None = None,
    grids: dict[str, QuantParams] | None = None,
) -> list[dict]:
    """Rewrite ``src`` with 4-bit weights into ``dst``; returns one row per layer.

    ``precision`` overrides single nodes: ``"fp32"`` leaves the weight float, ``"int8"``
    stores it in 8 bits with the same granularity (mixed precision). ``grids`` maps a
    weight initializer to the 4-bit scales to store it with (QAT's learned ones; the
    weight must already lie on that grid for the storage to be lossless).
    """
    return _write(Path(src), Path(dst), _as_weight_only(cfg), precision, grids, stage="int4")


def accuracy_aware(
    onnx_path: Path, cfg, ctx: StageContext, name: str, writer, fallbacks: tuple[str, ...] = ("fp32",)
) -> StageResult:
    """Write ``onnx_path`` with ``writer``; where the budget needs it, the accuracy-aware
    mechanism (``accuracy_aware.decide``) moves the fewest most sensitive layers to the
    safer settings ``fallbacks``. Shared by the weight-storage techniques.

    ``writer(src, dst, cfg, precision)`` writes the model with ``precision[node]`` (one of
    ``fallbacks``) overriding the technique's own setting, and returns per-layer rows.
    """
    import onnx

    from presso.techniques.graph import weighted_nodes
    from presso.techniques.quantization.accuracy_aware import FP32, Technique, decide

    layers_of: dict[str, list[dict]] = {}
    attempt = functools.partial(_write_and_score, Path(onnx_path), cfg, ctx, name, writer, layers_of)
    base = {n: FP32 for n in cfg.keep_float}
    base.update(getattr(cfg, "precision", None) or {})
    first = attempt(name, base)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    technique = Technique(
        layers=[n for n, _, _ in float_weight_plans(proto, set(base))],
        fallbacks=fallbacks,
        attempt=lambda _first, variant, precision: attempt(variant, precision),
        finish=functools.partial(
            _finish, name=name, layers_of=layers_of, weighted=weighted_nodes(proto), base=base
        ),
        base=base,
    )
    return decide([first], technique, ctx)


def _write_and_score(
    onnx_path: Path,
    cfg,
    ctx: StageContext,
    name: str,
    writer,
    layers_of: dict[str, list[dict]],
    variant: str,
    precision: dict[str, str],
) -> Candidate:
    """``onnx_path`` written with ``precision`` overriding single layers, then scored."""
    dst = ctx.workdir / f"{variant.replace('/', '_')}.onnx"
    ctx.log(f"{name}: writing weights ({variant})")
    options: dict = {"keep_float": sorted(n for n, p in precision.items() if p == "fp32")}
    wider = {n: p for n, p in precision.items() if p != "fp32"}
    if wider:
        options["precision"] = wider
    cand = Candidate(variant, dst, options=options)
    try:
        layers_of[variant] = writer(onnx_path, dst, cfg, precision)
        cand.score = ctx.score(dst)
    except PressoError:
        raise  # the user's options do not fit the model: say so, do not retry
    except Exception as exc:  # noqa: BLE001 - a graph this writer or ORT cannot handle is a failed variant
        msg = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        cand.path, cand.note = None, f"{name} failed: {msg[:200]}"
    return cand


def _finish(
    cand: Candidate,
    fell_back: dict[str, str],
    found,
    *,
    name: str,
    layers_of: dict[str, list[dict]],
    weighted: list[str],
    base: dict[str, str],
) -> None:
    """Per-layer rows and notes of one candidate: the pipeline may verify any of them."""
    from presso.techniques.quantization.accuracy_aware import annotate

    rows = annotate(layers_of.get(cand.name, []), found, fell_back)
    kept = sorted(set(weighted) - {row["node"] for row in rows})
    for n in kept:
        row = {"node": n, "precision": "fp32"}
        if n in found.sensitivity:
            row["sensitivity"] = round(found.sensitivity[n], 6)
        if n in fell_back or n in base:
            row["reason"] = annotate([{"node": n}], found, fell_back)[0].get(
                "reason", "kept float by the recipe"
            )
        rows.append(row)
    cand.layers = rows
    cand.notes = [
        (
            f"{len(rows) - len(kept)} layers store {name} weights; presso.load() runs them with ONNX Runtime "
            "session option session.disable_quant_qdq=1 (recorded in the model's metadata), which "
            "restores the float weights once at load: set it too when loading model.onnx "
            "with plain onnxruntime, or the weights are rebuilt on every call"
        )
    ]
    if kept:
        cand.notes.append(
            f"{len(kept)} weighted layers stay fp32: {', '.join(kept[:6])}"
            + (" ..." if len(kept) > 6 else "")
        )
    if fell_back:
        cand.notes.append(
            f"mixed precision: {len(fell_back)} most sensitive layer(s) fell back "
            f"({', '.join(f'{n} -> {p}' for n, p in list(fell_back.items())[:4])}"
            f"{' ...' if len(fell_back) > 4 else ''}); sensitivity of every layer is "
            "in the per-layer table"
        )


def calibrate(onnx_path: Path, cfg: WeightOnlyConfig, ctx: StageContext, name: str) -> Calibrated:
    """Inputs of every layer on the calibration rows, and AdaRound's integers at the
    stage's precision (learned here, once, with progress in the log)."""
    import onnx

    from presso.techniques.quantization.adaround import collect_inputs, input_spec, steps_for

    model = onnx.load(str(onnx_path))
    nodes = {n.name: n for n in model.graph.node}
    plans = _plan(model, cfg.group_size, set(cfg.keep_float), "weight-only")
    specs = {p.node: spec for p in plans if (spec := input_spec(model, nodes[p.node])) is not None}
    ctx.log(f"{name}: reading the inputs of {len(specs)} layers on {len(ctx.calibration)} calibration rows")
    inputs = collect_inputs(onnx_path, specs, ctx.calibration.inputs, seed=ctx.seed, workdir=ctx.workdir)
    inits = {i.name: i for i in model.graph.initializer}
    shapes = [
        (w.dims[1 if p.transposed else 0], int(np.prod(w.dims)) // w.dims[1 if p.transposed else 0])
        for p in plans
        if p.node in specs
        for w in [inits[p.weight]]
    ]  # (outputs, K)
    calib = Calibrated(
        inputs,
        {n: s.groups for n, s in specs.items()},
        cfg.rounding == "adaround",
        cfg.bias_correction,
        iters=steps_for(shapes),
    )
    if calib.adaround:
        from onnx import numpy_helper

        own = _precision(stage_precision(cfg), cfg)
        todo = [p for p in plans if p.node in specs and p.node not in cfg.precision]
        ctx.log(f"{name}: AdaRound, {calib.iters} steps a layer")
        for i, plan in enumerate(todo, 1):
            ctx.log(f"{name}: AdaRound {i}/{len(todo)} ({plan.node})")
            calib.integers(plan, own, numpy_helper.to_array(inits[plan.weight]), cfg.symmetric)
    return calib


def _variant_name(cfg: WeightOnlyConfig) -> str:
    name = stage_precision(cfg) + ("-pow2" if cfg.scheme == "power-of-two" else "")
    return name + ("-adaround" if cfg.rounding == "adaround" else "") + ("-bc" if cfg.bias_correction else "")


@technique(
    "weight-only",
    config=WeightOnlyConfig,
    domain="onnx",
    summary=(
        "weight-only quantization: int 2-8 bits, power-of-two scales, binary, float16/bfloat16; "
        "optional AdaRound rounding and bias correction from the calibration rows"
    ),
)
def quantize_weight_only(onnx_path: Path, cfg: WeightOnlyConfig, ctx: StageContext) -> StageResult:
    """The ``weight-only`` technique: write the weights, keep the fewest most sensitive
    layers at a safer precision (8 bits, then fp32) if the budget needs it."""
    name = _variant_name(cfg)
    calib = (
        calibrate(onnx_path, cfg, ctx, name) if cfg.rounding == "adaround" or cfg.bias_correction else None
    )
    # bits is set for the integer schemes (the config fills in 4): the None test narrows the type
    low = cfg.scheme == "binary" or (cfg.scheme in INT_SCHEMES and cfg.bits is not None and cfg.bits < 8)
    writer = functools.partial(write_weight_only, calib=calib)
    return accuracy_aware(onnx_path, cfg, ctx, name, writer, fallbacks=("int8", "fp32") if low else ("fp32",))


@technique(
    "int4",
    config=Int4Config,
    domain="onnx",
    summary=("4-bit weight-only quantization, packed two values a byte (per group / per channel)"),
    search=INT4,
)
def quantize_int4(onnx_path: Path, cfg: Int4Config, ctx: StageContext) -> StageResult:
    return accuracy_aware(onnx_path, cfg, ctx, "int4", write_int4, fallbacks=("int8", "fp32"))
