"""presso's own calibration for static int8: streaming observers, handed to ONNX Runtime as explicit ranges.

ORT's calibrators hold every batch's intermediate outputs (percentile/entropy keep the raw
values until the end), which runs out of memory on BERT-size models. Here the model runs
once per batch with the needed tensors exposed as extra graph outputs; each tensor's values
go into its own streaming observer (:mod:`.observers`) and are dropped before the next
batch, so memory is one batch's activations plus fixed-size histograms.

What ONNX Runtime needs (read in onnxruntime 1.32's ``quantization`` package)
-------------------------------------------------------------------------------
- Which tensors: ``quantize_static`` calibrates, for every node whose op type is in
  ``QLinearOpsRegistry | QDQRegistry`` (quantize.py, ``quantize_static``), each input and
  output that has a FLOAT/FLOAT16 type after ONNX shape inference and is not an initializer
  (calibrate.py, ``CalibraterBase.select_tensors_to_calibrate``). The QDQ quantizer makes
  scales only for those tensors (qdq_quantizer.py, ``calc_graph_quant_params``) and
  quantizes a subset of them. :func:`activation_tensors` applies the same rule.
- The ranges: ``extra_options={"TensorQuantOverrides": {name: [{"scale": float32 0-d array,
  "zero_point": uint8/int8 0-d array}]}}``, taken verbatim (qdq_quantizer.py,
  ``calc_quant_params``: both keys present -> used as is, ``.squeeze()``'d, so numpy arrays).
- Before using ranges ORT ties the input of a single-consumer Relu/Clip to the output's
  range and sets Softmax outputs to [0, 1] (base_quantizer.py, ``adjust_tensor_ranges``);
  an override would defeat that, so :func:`static_quantize_kwargs` applies the same ties.
- Skipping ORT's calibration: ``quantize_static(calibration_cache_path=...)`` (recent ORT)
  loads ranges from a JSON file (calibrate.py, ``save_tensors_data``) and runs no inference.
  Older ORT always calibrates: then it gets one batch and the overrides replace its ranges.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from presso.errors import PressoError, reason
from presso.progress import SILENT, Progress
from presso.techniques.quantization.observers import (
    OBSERVERS,
    EntropyObserver,
    MSEObserver,
    PercentileObserver,
    RangeObserver,
    make_observer,
)

__all__ = ["Calibration", "activation_tensors", "calibrate", "quant_overrides", "static_quantize_kwargs"]

OBSERVER_NAMES = ("auto", *OBSERVERS)
_AUTO_CANDIDATES = ("minmax", "percentile", "mse", "entropy")
_QTYPES = {"u8": "UINT8", "s8": "INT8"}


@dataclass(frozen=True)
class Calibration:
    """Per-tensor ``(rmin, rmax)`` and the observer that produced each range."""

    ranges: dict[str, tuple[float, float]]
    observers: dict[str, str]


def activation_tensors(model_path) -> list[str]:
    """Float activation tensors ONNX Runtime's static quantizer needs a range for, in graph order.

    Graph inputs included, initializers (weights) excluded; see the module notes for the rule.

    Examples
    --------
    >>> activation_tensors("model.onnx")  # doctest: +SKIP
    ['input', '/fc1/Gemm_output_0', '/relu/Relu_output_0', 'logits']
    """
    return _select(_typed_model(model_path))


def calibrate(
    model_path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    observer: str | Mapping[str, str] = "minmax",
    *,
    progress: Progress = SILENT,
    batches: int | None = None,
    **observer_options,
) -> Calibration:
    """Run the model batch by batch and return each activation tensor's quantization range.

    Parameters
    ----------
    model_path : str or Path
        ONNX model (external data stays on disk).
    feeds : iterable of dict, or an ORT ``CalibrationDataReader``
        One ``{input name: array}`` per batch; consumed once, never stored.
    observer : str or dict, default="minmax"
        One of ``auto, minmax, moving_average, percentile, mse, entropy`` for every tensor,
        or ``{tensor: name}`` (unlisted tensors use "minmax"). "auto" picks, per tensor, the
        range among minmax/percentile/mse/entropy with the lowest int8 quantization MSE.
    progress, batches
        Where a bar shows the batches run (of ``batches``, when known).
    **observer_options
        Passed to each observer that takes them (``percentile=99.9``, ``bins=4096``...).

    Examples
    --------
    >>> cal = calibrate("model.onnx", [{"input": x[:8]}, {"input": x[8:]}], "auto")  # doctest: +SKIP
    >>> cal.ranges["input"], cal.observers["input"]  # doctest: +SKIP
    ((-3.1, 3.2), 'mse')
    """
    observers = _collect(model_path, feeds, observer, observer_options, progress, batches)
    ranges, chosen = {}, {}
    for name, (obs, kind) in observers.items():
        if getattr(obs, "n_seen_", 0) == 0:  # an empty tensor in every batch: nothing to scale
            ranges[name], chosen[name] = (0.0, 0.0), "minmax" if kind == "auto" else kind
            continue
        lo, hi = obs.range_()
        ranges[name] = (float(lo), float(hi))
        # kind "auto" is exactly an _AutoObserver (_build): the isinstance test narrows the type
        chosen[name] = obs.choice_ if isinstance(obs, _AutoObserver) else kind
    return Calibration(ranges, chosen)


def quant_overrides(
    calibration, activation_type: str = "u8", symmetric: bool = False
) -> dict[str, list[dict]]:
    """ORT ``TensorQuantOverrides`` fixing each tensor's scale and zero point from its range.

    Scale and zero point come from ORT's own formula (``quant_utils.compute_scale_zp``: the
    range is widened to contain 0, and made ``+-max|r|`` when ``symmetric``), so they equal
    what ORT would derive from the same range. ``calibration`` is a :class:`Calibration` or
    a ``{tensor: (rmin, rmax)}`` dict.

    Examples
    --------
    >>> quant_overrides({"x": (-1.0, 3.0)}, "u8")["x"]  # doctest: +SKIP
    [{'scale': array(0.01568628, dtype=float32), 'zero_point': array(64, dtype=uint8)}]
    """
    import onnx
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    _check_activation_type(activation_type)
    qmin, qmax = get_qmin_qmax_for_qType(
        getattr(onnx.TensorProto, _QTYPES[activation_type]), symmetric=symmetric
    )
    ranges = calibration.ranges if isinstance(calibration, Calibration) else calibration
    out = {}
    for name, (lo, hi) in ranges.items():
        zero, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric)
        out[name] = [{"scale": np.asarray(scale, np.float32), "zero_point": np.asarray(zero, qmin.dtype)}]
    return out


def static_quantize_kwargs(
    model_path,
    reader_feeds,
    observer: str | Mapping[str, str] = "auto",
    activation_type: str = "u8",
    *,
    symmetric: bool = False,
    nodes_to_exclude: Iterable[str] = (),
    workdir=None,
    progress: Progress = SILENT,
    batches: int | None = None,
    **observer_options,
) -> dict:
    """Calibrate with presso and return the keyword arguments that make ``quantize_static`` use it.

    Merge them into the call (``extra_options`` merged key by key into yours) and pass no
    calibration reader of your own: the result carries ``calibration_data_reader``, which is
    ``None`` when this ORT reads ranges from ``calibration_cache_path`` (no ORT calibration
    at all) and a one-batch reader otherwise (ORT's ranges are then replaced by the overrides).
    ``activation_type`` and ``ActivationSymmetric`` are included because the overrides were
    computed for them. ``nodes_to_exclude`` must be the list given to ``quantize_static``.
    The cache file goes to ``workdir`` (a new temporary folder if None: inside a presso run,
    Python's temporary folder is the run's own, removed with it).

    Examples
    --------
    >>> kw = static_quantize_kwargs(src, feeds, "auto", "u8", workdir=tmp)  # doctest: +SKIP
    >>> extra = {"WeightSymmetric": True, **kw.pop("extra_options")}  # doctest: +SKIP
    >>> quantize_static(src, dst, quant_format=QuantFormat.QDQ, extra_options=extra, **kw)  # doctest: +SKIP
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType

    _check_activation_type(activation_type)
    use_cache = _ort_reads_calibration_cache()
    first: list[dict] = []

    def remember_first(feeds):  # ORT's own calibration will need one batch when it cannot be skipped
        for feed in feeds:
            if not first and not use_cache:
                first.append(feed)
            yield feed

    model = _typed_model(model_path)
    tensors = set(_select(model))
    half = [
        vi.name
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)
        if vi.name in tensors and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    ]
    if half:
        raise PressoError(
            f"Tensor {half[0]!r} is float16: presso's int8 ranges are written as float32 scales, "
            "which float16 QuantizeLinear nodes reject. Quantize the float32 model."
        )
    cal = calibrate(
        model_path,
        remember_first(_iterate(reader_feeds)),
        observer,
        progress=progress,
        batches=batches,
        **observer_options,
    )
    ranges = _ort_adjusted(cal.ranges, model, set(nodes_to_exclude))
    del model
    kwargs = {
        "activation_type": QuantType.QUInt8 if activation_type == "u8" else QuantType.QInt8,
        "calibrate_method": CalibrationMethod.MinMax,
        "extra_options": {
            "ActivationSymmetric": symmetric,
            "TensorQuantOverrides": quant_overrides(ranges, activation_type, symmetric),
        },
    }
    if use_cache:
        from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

        path = Path(workdir or tempfile.mkdtemp(prefix="presso-calibration-")) / "presso-calibration.json"
        save_tensors_data(
            TensorsData(
                CalibrationMethod.MinMax,
                {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()},
            ),
            path,
        )
        kwargs.update(calibration_cache_path=str(path), calibration_data_reader=None)
    else:
        kwargs["calibration_data_reader"] = _OneBatch(first[0])
    return kwargs


# --- running the model -----------------------------------------------------------------------


def _collect(
    model_path, feeds, observer, options, progress: Progress = SILENT, batches: int | None = None
) -> dict[str, tuple[RangeObserver, str]]:
    """Tensor -> (fitted observer, observer name); one ORT run per batch, nothing kept across batches."""
    import onnx
    import onnxruntime as ort

    if isinstance(observer, str):
        _check_name(observer)
    model = _typed_model(model_path)
    tensors = _select(model)
    names = _names_per_tensor(observer, tensors)
    _check_options(options, set(names.values()))
    observers = {t: (_build(names[t], options), names[t]) for t in tensors}
    inputs = [i.name for i in model.graph.input if i.name not in {w.name for w in model.graph.initializer}]
    fetch = [t for t in tensors if t not in inputs]  # graph inputs are observed from the feeds
    outputs = {o.name for o in model.graph.output}
    value_infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.output)}
    model.graph.output.extend(value_infos[t] for t in fetch if t not in outputs)  # as ORT's calibrator
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT's calibrator
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="presso-calibrate-") as tmp:
        if _has_external_data(model):
            # ORT refuses external data outside the model's folder (links included): load the
            # weight-less graph from memory and point ORT at the original folder.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(Path(model_path).resolve().parent)
            )
            source = model.SerializeToString()
        else:
            source = str(Path(tmp) / "calibration.onnx")
            onnx.save(model, source)
        del model
        try:
            sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's error classes share no base but Exception
            raise PressoError(
                f"ONNX Runtime cannot load {model_path} for calibration: {reason(exc)}"
            ) from None
        n_batches = 0
        with progress.task("calibrating activation ranges (batches)", total=batches) as advance:
            for i, feed in enumerate(_iterate(feeds)):
                feed = {k: v for k, v in feed.items() if k in inputs}
                try:
                    values = sess.run(fetch, feed)  # one batch of every fetched activation
                except Exception as exc:  # noqa: BLE001 - as above
                    raise PressoError(
                        f"ONNX Runtime could not run calibration batch {i}: {reason(exc)}. "
                        f"Feed the model's inputs ({', '.join(inputs)}) with their dtypes and shapes."
                    ) from None
                for name, value in zip(fetch, values, strict=True):
                    observers[name][0].observe(value)
                for name in inputs:
                    if name in observers:
                        observers[name][0].observe(feed[name])
                del values, feed  # nothing of this batch outlives it
                n_batches += 1
                advance()
    if n_batches == 0:
        raise PressoError("calibrate() got no batches. Give it at least one {input name: array} dict.")
    return observers


class _OneBatch:
    """CalibrationDataReader over a single feed (ORT's own calibration, when it cannot be skipped)."""

    def __init__(self, feed):
        self.feed = feed

    def get_next(self):
        feed, self.feed = self.feed, None
        return feed


def _iterate(feeds) -> Iterator[Mapping[str, np.ndarray]]:
    if hasattr(feeds, "get_next"):  # an ORT CalibrationDataReader
        return iter(feeds.get_next, None)
    return iter(feeds)


def _typed_model(model_path):
    """The graph (weights left on disk) with ONNX shape inference's types, as ORT infers them."""
    import onnx

    path = Path(model_path)
    if not path.is_file():
        raise PressoError(f"No ONNX model at {path}. Give the path of a .onnx file.")
    return onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))


def _select(model) -> list[str]:
    """ORT's rule (calibrate.py ``select_tensors_to_calibrate``), in graph order instead of a set."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = set(QLinearOpsRegistry) | set(QDQRegistry)  # quantize_static's default op_types_to_quantize
    g = model.graph
    types = {vi.name: vi.type for vi in (*g.value_info, *g.output, *g.input)}
    weights = {w.name for w in g.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    picked: dict[str, None] = {}
    for node in g.node:
        if node.op_type in ops:
            for name in (*node.input, *node.output):
                t = types.get(name)
                if (
                    t is not None
                    and t.HasField("tensor_type")
                    and t.tensor_type.elem_type in floats
                    and name not in weights
                ):
                    picked[name] = None
    return list(picked)


def _ort_adjusted(ranges: dict, model, excluded: set[str]) -> dict[str, tuple[float, float]]:
    """The ranges after ORT's ``adjust_tensor_ranges`` (base_quantizer.py), replayed node by node as it does."""
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    out = dict(ranges)
    for node in model.graph.node:
        if node.name in excluded:
            continue
        if node.op_type in ("Clip", "Relu"):
            src, dst = node.input[0], node.output[0]
            if consumers.get(src) == 1 and src in out and dst in out:
                out[src] = out[dst]
        elif node.op_type == "Softmax" and node.output[0] in out:
            out[node.output[0]] = (0.0, 1.0)
    return out


def _has_external_data(model) -> bool:
    import onnx

    def graphs(g):
        yield g
        for node in g.node:
            for a in node.attribute:
                for sub in (*([a.g] if a.HasField("g") else []), *a.graphs):
                    yield from graphs(sub)

    for g in graphs(model.graph):
        tensors = [*g.initializer, *(a.t for n in g.node for a in n.attribute if a.HasField("t"))]
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
            return True
    return False


def _ort_reads_calibration_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _check_activation_type(activation_type) -> None:
    if activation_type not in _QTYPES:
        raise PressoError(
            f"The activation type must be one of {', '.join(map(repr, _QTYPES))}. "
            f"Got {activation_type!r} instead."
        )


# --- observers -------------------------------------------------------------------------------


def _check_name(name) -> None:
    if not isinstance(name, str) or name not in OBSERVER_NAMES:
        raise PressoError(f"Unknown observer {name!r}. Choose one of: {', '.join(OBSERVER_NAMES)}.")


def _names_per_tensor(observer, tensors: list[str]) -> dict[str, str]:
    if isinstance(observer, str):
        return dict.fromkeys(tensors, observer)
    if not isinstance(observer, Mapping):
        raise PressoError(
            "The 'observer' option must be an observer name or a dict {tensor: observer name}. "
            f"Got {type(observer).__name__} instead."
        )
    for name in observer.values():
        _check_name(name)
    unknown = sorted(set(observer) - set(tensors))
    if unknown:
        shown = ", ".join(tensors[:8]) + (f" ... ({len(tensors)} in all)" if len(tensors) > 8 else "")
        raise PressoError(
            f"The observer dict names tensor(s) {', '.join(unknown)} that ONNX Runtime does not "
            f"quantize in this model. Its activation tensors: {shown}."
        )
    return {t: observer.get(t, "minmax") for t in tensors}


def _takes(name: str) -> set[str]:
    if name == "auto":
        return set(inspect.signature(_AutoObserver).parameters)
    return set(inspect.signature(OBSERVERS[name]).parameters)


def _build(name: str, options: dict) -> RangeObserver:
    kw = {k: v for k, v in options.items() if k in _takes(name)}
    return _AutoObserver(**kw) if name == "auto" else make_observer(name, **kw)


def _check_options(options: dict, used: set[str]) -> None:
    unused = sorted(set(options) - set().union(*(_takes(n) for n in used)))
    if unused:
        takes = "; ".join(f"{n}: {', '.join(sorted(_takes(n))) or 'none'}" for n in sorted(used))
        raise PressoError(
            f"Observer option(s) {', '.join(unused)} are taken by none of the observers used "
            f"({takes}). Drop them or choose an observer that takes them."
        )


class _AutoObserver:
    """Per tensor, the candidate range with the lowest expected int8 quantization MSE.

    Why MSE on the histogram: the four candidates optimise different things (coverage,
    a quantile, MSE over scaled min-max ranges, KL divergence), so they are compared on one
    yardstick, the error the int8 tensor will actually carry. It is estimated from the
    observed histogram for the quantizer ORT applies: the range widened to contain 0, 255
    steps; a value inside costs ``step**2 / 12`` (rounding), one outside its squared
    distance to the clipped edge, and an exact zero nothing (the zero point represents it:
    half of a Relu output). Min-max wins ties; a clipping range wins only where the values
    it clips cost less than the coarser steps min-max gives everything else.

    State: one signed histogram (min-max, percentile and MSE read it), one of ``|x|``
    (entropy) and a count of zeros, fixed in size whatever the number of batches.
    """

    def __init__(self, *, percentile: float = 99.99, bins: int = 2048):
        self.percentile = percentile
        self.bins = bins

    def observe(self, x) -> _AutoObserver:
        if not hasattr(self, "signed_"):
            self.signed_ = PercentileObserver(percentile=self.percentile, bins=self.bins)
            self.abs_ = EntropyObserver(bits=8, bins=self.bins)
            self.zeros_ = 0
        self.signed_.observe(x)
        self.abs_.observe(x)
        self.zeros_ += int(np.count_nonzero(np.asarray(x) == 0))
        self.n_seen_ = self.signed_.n_seen_
        return self

    def candidates(self) -> dict[str, tuple[float, float]]:
        """Each candidate observer's range."""
        h = self.signed_.hist_
        mse = MSEObserver(bits=8, bins=self.bins)
        mse.hist_, mse.n_seen_ = h, h.n_seen_  # it only reads these: lend the shared histogram
        return {
            "minmax": (float(h.min_), float(h.max_)),
            "percentile": self.signed_.range_(),
            "mse": mse.range_(),
            "entropy": self.abs_.range_(),
        }

    def range_(self) -> tuple[float, float]:
        cands = self.candidates()
        self.errors_ = {
            name: _int8_mse(self.signed_.hist_, *cands[name], zeros=self.zeros_) for name in _AUTO_CANDIDATES
        }
        self.choice_ = min(_AUTO_CANDIDATES, key=self.errors_.__getitem__)  # first minimum: min-max on ties
        return cands[self.choice_]


def _int8_mse(hist, lo: float, hi: float, zeros: int = 0) -> float:
    """Expected squared error per value of asymmetric 8-bit quantization over ``[lo, hi]`` (see _AutoObserver)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / 255
    edges = hist.edges_
    centres = 0.5 * (edges[:-1] + edges[1:])  # (B,)
    d2 = (centres - np.clip(centres, lo, hi)) ** 2
    rounding = step**2 / 12 * (hist.counts_[d2 == 0].sum() - zeros)  # zeros lie inside every range
    return float(((hist.counts_ * d2).sum() + rounding) / hist.n_seen_)
