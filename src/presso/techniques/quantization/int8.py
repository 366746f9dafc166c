"""int8 post-training quantization, executed by ONNX Runtime's integer kernels.

Accuracy-aware: every variant that fits the model is quantized, scored on the
calibration rows against the budget and timed; the passing ones are returned fastest
first. If none passes, or none passes on the held-out rows, the most sensitive layers of
the most faithful variant fall back to fp32 (``accuracy_aware.py``) before giving up. Nothing here assumes a speed-up: it is measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from presso.errors import PressoError, reason
from presso.measure.bench import Timing, clearly_slower
from presso.model.onnx_file import fixed_batch_sizes
from presso.runtime.cpu import cpu_features
from presso.runtime.onnx_files import too_large_for_one_file
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.graph import float_weight_nodes, weighted_nodes
from presso.techniques.quantization.accuracy_aware import FP32, MixedSearch, Technique, annotate, decide
from presso.techniques.quantization.config import Int8Config
from presso.techniques.quantization.ort_calls import in_folder, quiet_ort
from presso.techniques.quantization.search import INT8

_QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QAttention",
}


def default_variants(is_transformer: bool, saturates: bool) -> list[str]:
    # Static QDQ of whole transformers collapses unless LayerNorm/Softmax/GELU/Add stay
    # float (see STATIC_TRANSFORMER_OPS), and measured slower than fp32 here; the fused
    # dynamic path is both faithful and fast. 7-bit weights (reduce_range) only help where ORT's u8 x s8
    # products saturate (no VNNI, presso.runtime.cpu); with exact sums they cost fidelity
    # for nothing (measured). "dynamic-smooth" (per-layer SmoothQuant scales, smooth.py,
    # and where products saturate per-layer 7-bit weights, weight_range.py) costs one Mul
    # per smoothed layer; the ranking keeps it when it times within the tie margin and is
    # more faithful.
    seven_bit = ["dynamic-reduce-range"] if saturates else []
    if is_transformer:
        return ["dynamic", "dynamic-smooth", *seven_bit]
    # Where products saturate, static-u8s8 gets 7-bit weights too (_quantize); plain dynamic
    # int8 of a small MLP changed 219 of 3,000 predictions there (emulated), 10 with exact sums.
    return ["static-s8s8", "static-u8s8", "dynamic", *seven_bit]


# Static int8 of a transformer quantizes only its matrix products: with LayerNorm,
# Softmax, GELU and the residual Adds quantized too (ORT's default op set), fidelity
# collapses (a known failure; measured on a tiny BERT in tests/model/test_text_models.py).
STATIC_TRANSFORMER_OPS = ["MatMul", "Gemm"]

# Calibration rows the one-pass layer sensitivity runs (layer_error.py): the ranking of 72
# BERT-base layers needs the error's size, not its third digit.
SENSITIVITY_ROWS = 128

# A variant is slower than the fastest only by more than this and in every interleaved
# round (``clearly_slower``); otherwise it is a tie and the more faithful one wins it.
_LATENCY_TIE = 0.03


def _measured(c: Candidate) -> tuple[float, Timing, float]:
    """(p50 latency in ms, timing, calibration score) of a candidate to rank."""
    # decide() ranks only candidates that passed (so carry a score), after timing each
    assert c.latency_ms is not None and c.timing is not None and c.score is not None, c.name
    return c.latency_ms, c.timing, -c.score.drop  # higher: more faithful, whatever the metric's direction


def rank(passing: list[Candidate]) -> list[Candidate]:
    """Fastest first; among those not clearly slower than the fastest, most faithful first."""
    by_speed = sorted(passing, key=lambda c: _measured(c)[0])
    if not by_speed:
        return by_speed
    fastest = _measured(by_speed[0])[1]
    tied = [c for c in by_speed if not clearly_slower(_measured(c)[1], fastest, _LATENCY_TIE)]
    return sorted(tied, key=lambda c: -_measured(c)[2]) + [
        c for c in by_speed if all(c is not t for t in tied)
    ]


class _Reader:
    """ORT CalibrationDataReader over the calibration rows, in small batches."""

    def __init__(self, data, input_names: list[str], rows: int, batch: int = 16):
        self._feeds = [
            {k: v for k, v in feed.items() if k in input_names} for feed in data.head(rows).batches(batch)
        ]
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def _preprocess(src: Path, dst: Path, log) -> Path:
    """Shape inference + graph clean-up that ORT recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with in_folder(dst.parent):  # where ORT leaves its temporary files when it gives up
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception as exc:  # some graphs defeat symbolic shape inference; quantize as is
        log(f"pre-processing skipped ({type(exc).__name__}); quantizing the graph as exported")
        return src


def _fuse_transformer(src: Path, dst: Path, shape: dict, log) -> tuple[Path, dict[str, int], str | None]:
    """ORT's transformer fusion (Attention, SkipLayerNorm, BiasGelu...) for the model's family,
    with the stage note saying what was fused and why attention was not
    (``transformer_fusion.py``)."""
    from presso.techniques.quantization.transformer_fusion import fuse_transformer

    return fuse_transformer(src, dst, shape, log)


def _calibration_calls(ctx: StageContext, input_names: list[str]):
    return ({k: v for k, v in feed.items() if k in input_names} for feed in ctx.calibration.batches(1))


def _smoothed(src: Path, ctx: StageContext, input_names: list[str]) -> Path:
    """``src`` with per-layer SmoothQuant scales (``smooth.py``), computed once per stage."""
    from presso.techniques.quantization.smooth import smooth_matmuls

    dst = ctx.workdir / "smoothed.onnx"
    if not dst.exists():
        rows = smooth_matmuls(src, dst, _calibration_calls(ctx, input_names), ctx.log)
        (ctx.workdir / "smoothing.json").write_text(json.dumps(rows))
    return dst


def _seven_bit_weights(src: Path, ctx: StageContext, input_names: list[str]) -> list[str]:
    """Weights of ``src`` (the smoothed graph) that get 7 bits (``weight_range.py``): where
    this CPU's int8 products saturate and 7 bits cut the emulated error; once per stage."""
    from presso.techniques.quantization.weight_range import choose_weight_ranges

    path = ctx.workdir / "weight_ranges.json"
    if not path.exists():
        rows = choose_weight_ranges(
            src, _calibration_calls(ctx, input_names), cpu_features().int8_saturates, ctx.log
        )
        path.write_text(json.dumps(rows))
    return [r["weight"] for r in json.loads(path.read_text()) if r["weights"] == "7-bit"]


def _rows_of(ctx: StageContext, name: str) -> dict[str, dict]:
    path = ctx.workdir / name
    return {r["node"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def smoothing_rows(ctx: StageContext) -> dict[str, dict]:
    return _rows_of(ctx, "smoothing.json")


def _dynamic_exclusions(src: Path, exclude: list[str]) -> list[str]:
    """``exclude`` as ORT's dynamic quantizer must be told it.

    Before quantizing, ``quantize_dynamic`` rewrites each Gemm as a MatMul named
    ``NAME_MatMul`` (plus an Add) and only then matches ``nodes_to_exclude``: a Gemm
    excluded by its own name, as every layer of an MLP or a classifier head exports, is
    quantized all the same (onnxruntime 1.32, ``ONNXQuantizer.__init__``), and the layer a
    fallback kept float would silently be int8. Both names are given."""
    import onnx

    if not exclude:
        return []
    gemms = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "Gemm"}
    return [*exclude, *(f"{n}_MatMul" for n in exclude if n in gemms)]


def _quantize(
    variant: str,
    src: Path,
    dst: Path,
    cfg: Int8Config,
    ctx: StageContext,
    input_names: list[str],
    exclude: list[str],
    calibration_batch: int,
) -> None:
    import onnx
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if variant.startswith("dynamic"):

        def dynamic(source: Path, target: Path, reduce_range: bool) -> Path:
            quantize_dynamic(
                str(source),
                str(target),
                per_channel=cfg.per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=_dynamic_exclusions(source, exclude) or None,
                # Fused transformer ops (com.microsoft domain) defeat ORT's type inference;
                # their tensors are float.
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
                use_external_data_format=too_large_for_one_file(source),
            )
            return target

        if variant != "dynamic-smooth":
            dynamic(src, dst, reduce_range=variant == "dynamic-reduce-range")
            return
        src = _smoothed(src, ctx, input_names)
        dynamic(src, dst, reduce_range=False)
        seven = _seven_bit_weights(src, ctx, input_names) if cfg.per_channel else []
        if seven:
            from presso.techniques.quantization.weight_range import splice

            reduced = dynamic(src, dst.with_name(dst.stem + "-reduced-range.onnx"), reduce_range=True)
            splice(dst, reduced, seven, dst)
            reduced.unlink()
        return
    from presso.techniques.quantization.calibrate import static_quantize_kwargs

    u8 = variant == "static-u8s8"
    # presso's own streaming calibration (bounded memory; ORT's calibrators keep every
    # activation), handed to ORT as explicit per-tensor ranges.
    feeds = _Reader(ctx.calibration, input_names, cfg.calibration_rows, calibration_batch)
    kwargs = static_quantize_kwargs(
        src,
        feeds,
        cfg.calibration,
        "u8" if u8 else "s8",
        nodes_to_exclude=exclude,
        workdir=ctx.workdir,
        progress=ctx.progress,
        batches=len(feeds),
    )
    extra = {
        "WeightSymmetric": True,
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        **kwargs.pop("extra_options"),
    }
    quantize_static(
        str(src),
        str(dst),
        quant_format=QuantFormat.QDQ,
        per_channel=cfg.per_channel,
        op_types_to_quantize=STATIC_TRANSFORMER_OPS if ctx.transformer is not None else None,
        # u8 activations x s8 weights saturate pairs of products at int16 on x86 without
        # VNNI (presso.runtime.cpu); 7-bit weights (reduce_range) are ORT's remedy there.
        reduce_range=u8 and cpu_features().int8_saturates,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        extra_options=extra,
        use_external_data_format=too_large_for_one_file(src),
        **kwargs,
    )


def _quietly(ranked: Iterable[Candidate]) -> Iterator[Candidate]:
    """``ranked``, each next candidate built with ORT's advice silenced."""
    it = iter(ranked)
    while True:
        with quiet_ort():
            cand = next(it, None)
        if cand is None:
            return
        yield cand


@technique(
    "int8",
    config=Int8Config,
    domain="onnx",
    summary="int8 post-training quantization on ONNX Runtime integer kernels, accuracy-aware",
    search=INT8,
)
def quantize_int8(onnx_path: Path, cfg: Int8Config, ctx: StageContext) -> StageResult:
    with quiet_ort():
        return _quantize_int8(Path(onnx_path).resolve(), cfg, ctx)


def _quantize_int8(onnx_path: Path, cfg: Int8Config, ctx: StageContext) -> StageResult:
    import onnx

    work = ctx.workdir
    notes: list[str] = []
    proto = onnx.load(str(onnx_path), load_external_data=False)
    quantized_ops = sorted({n.op_type for n in proto.graph.node} & _QUANTIZED_OPS)
    if quantized_ops:
        raise PressoError(
            f"The model is already quantized (it has {', '.join(quantized_ops)} nodes). "
            "Give presso the original fp32 model."
        )
    input_names = [i.name for i in proto.graph.input]
    # A graph with a fixed batch axis (exported without dynamic axes) calibrates row by row.
    calibration_batch = 1 if fixed_batch_sizes(proto.graph) else 16
    # ``load_external_data=False`` still reads weights stored inside the file (all of them
    # below 2 GB): BERT-base's 415 MiB, held for the whole stage if kept.
    del proto
    variants = (
        default_variants(ctx.transformer is not None, cpu_features().int8_saturates)
        if cfg.variants == "auto"
        else list(cfg.variants)
    )

    src = onnx_path
    if ctx.transformer is not None and cfg.fuse_transformer:
        # Fuse first: symbolic shape inference fails on the unfused BERT graph (measured).
        src, _, fusion_note = _fuse_transformer(src, work / "fused.onnx", ctx.transformer, ctx.log)
        if fusion_note:
            notes.append(fusion_note)
    src = _preprocess(src, work / "preprocessed.onnx", ctx.log)
    graph = onnx.load(str(src), load_external_data=False)  # read once, dropped: see above
    weighted = weighted_nodes(graph)
    ops = {n.name: n.op_type for n in graph.graph.node}
    del graph

    def attempt(variant: str, exclude: list[str], name: str | None = None) -> Candidate:
        name = name or variant
        dst = work / f"int8-{name.replace('/', '_')}.onnx"
        options = {"variants": [variant], "keep_float": sorted(exclude)}
        ctx.log(f"int8: quantizing ({name})")
        try:
            _quantize(variant, src, dst, cfg, ctx, input_names, exclude, calibration_batch)
        except Exception as exc:
            msg = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
            return Candidate(name, None, note=f"quantizer failed: {msg[:200]}", options=options)
        cand = Candidate(name, dst, options=options)
        try:
            cand.score = ctx.score(dst)
        except Exception as exc:  # a graph ORT cannot run is a failed variant, not a crash
            msg = reason(exc)
            cand.path, cand.note = None, f"does not run on ONNX Runtime: {msg[:160]}"
        return cand

    base_exclude = list(cfg.keep_float)

    def mixed_attempt(start: Candidate, name: str, precision: dict[str, str]) -> Candidate:
        # Mixed precision: the most sensitive layers of the most faithful variant stay fp32.
        return attempt(
            start.options["variants"][0], sorted(n for n, p in precision.items() if p == FP32), name
        )

    def finish(cand: Candidate, fell_back: dict[str, str], found: MixedSearch) -> None:
        # each candidate's own per-layer table: the pipeline may verify any
        cand.layers, cand.notes = _layer_rows(cand, weighted, ops, fell_back, found, cfg, ctx)

    def one_pass(start: Candidate, layers: list[str]) -> dict[str, float] | None:
        if start.path is None:
            return None  # not written: sensitivity one layer at a time finds the culprit
        from presso.techniques.quantization.layer_error import layer_errors

        variant = start.options["variants"][0]
        # the graph the variant was quantized from: its node and tensor names are the layers'
        reference = _smoothed(src, ctx, input_names) if variant == "dynamic-smooth" else src
        rows = ctx.calibration.head(min(len(ctx.calibration), SENSITIVITY_ROWS))
        # one row per batch, as the scoring runs (dynamic ranges are per batch)
        feeds = ({k: v for k, v in f.items() if k in input_names} for f in rows.batches(1))
        return layer_errors(reference, start.path, layers, feeds, work, ctx.progress, len(rows))

    technique = Technique(
        layers=[n for n in weighted if n not in base_exclude],
        fallbacks=[FP32],
        attempt=mixed_attempt,
        finish=finish,
        base={n: FP32 for n in base_exclude},
        rank=rank,
        one_pass=one_pass,
    )
    first = []
    for i, v in enumerate(variants, 1):
        with ctx.progress.task(f"int8: quantizing and scoring variant {i}/{len(variants)} ({v})"):
            first.append(attempt(v, base_exclude))
    result = decide(first, technique, ctx)
    result.notes = notes
    # Mixes are quantized lazily, while the pipeline verifies: in the workdir, quietly, too.
    result.ranked = _quietly(result.ranked)
    return result


def _layer_rows(
    cand: Candidate,
    weighted: list[str],
    ops: dict[str, str],
    fell_back: dict[str, str],
    found: MixedSearch,
    cfg: Int8Config,
    ctx: StageContext,
) -> tuple[list[dict], list[str]]:
    """Per-layer rows and notes of one quantized candidate."""
    import onnx

    notes = []
    still_float = float_weight_nodes(onnx.load(str(cand.path), load_external_data=False))
    if still_float:
        kinds = sorted({op for _, op in still_float})
        notes.append(
            f"{len(still_float)} weighted node(s) stay fp32 ({', '.join(kinds)}): "
            "ONNX Runtime has no integer kernel for them in this variant, or they were kept float"
        )
    if fell_back:
        notes.append(
            f"mixed precision: the {len(fell_back)} most sensitive layer(s) stay fp32 "
            f"({', '.join(list(fell_back)[:4])}{' ...' if len(fell_back) > 4 else ''})"
        )
    float_names = {n for n, _ in still_float}
    variant = cand.options["variants"][0]
    observer = (
        "per batch, at run time"
        if variant.startswith("dynamic")
        else f"{cfg.calibration} on {min(cfg.calibration_rows, len(ctx.calibration))} rows"
    )
    smoothing = smoothing_rows(ctx) if variant == "dynamic-smooth" else {}
    ranges = (
        {n: r for n, r in _rows_of(ctx, "weight_ranges.json").items() if r["weights"] == "7-bit"}
        if variant == "dynamic-smooth"
        else {}
    )
    if ranges:
        notes.append(
            f"{len(ranges)} layer(s) got 7-bit weights: on this CPU ONNX Runtime adds pairs of "
            "u8 x s8 products in int16 with saturation (no VNNI), and for them 7 bits cost "
            "less than saturation (emulated on the calibration rows)"
        )
    layers = []
    for node in weighted:
        row = {"node": node, "op": ops.get(node, "")}
        if node in float_names or node in cand.options["keep_float"]:
            row["precision"] = FP32
        else:
            row.update(
                precision="int8",
                granularity="per channel" if cfg.per_channel else "per tensor",
                activations=f"int8, {observer}",
            )
        if node in smoothing:
            row["smoothing"] = smoothing[node]["smoothing"]
        if node in ranges and row.get("precision") == "int8":
            row["weights"] = "7-bit (saturation)"
        layers.append(row)
    layers = annotate(layers, found, fell_back)
    known = set(weighted)
    layers += [{"node": n, "op": op, "precision": FP32} for n, op in still_float if n not in known]
    return layers, notes
