"""Per-layer sensitivity from one pass: each layer's own output error in a changed model.

Measuring a layer's sensitivity as the metric drop with only that layer changed costs one
full write-and-score per layer: 72 of them for BERT-base, about 3 minutes each. Here the
changed model (every layer quantized) runs once over the calibration rows with each
layer's inputs and output exposed as graph outputs, and the reference (float) copy of
every layer runs on those same inputs. A layer's error is what it adds by itself::

    error(layer) = ||y_changed - f(x_changed)|| / ||f(x_changed)||

with ``x_changed`` its inputs and ``y_changed`` its output in the changed model and ``f``
its float version: the error arriving from earlier layers is in both terms, so it cancels.
Any op works (MatMul, Gemm, Conv, fused Attention, a Gather of an embedding table), as long
as the changed model keeps the layer's input and output tensor names, which ONNX Runtime's
quantizers and presso's weight writers do. A layer whose tensors are gone gets ``inf``
(measured as most sensitive, like a layer that cannot be written).

Memory: one batch of the exposed tensors at a time, and the float layers' weights once (the
reference graph is rewritten in place into the float layers' graph, not copied).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from presso.progress import SILENT, Progress
from presso.runtime.onnx_files import save_onnx


def layer_errors(
    reference: Path,
    changed: Path,
    layers: list[str],
    feeds: Iterable[Mapping[str, np.ndarray]],
    workdir: Path,
    progress: Progress = SILENT,
    rows: int | None = None,
) -> dict[str, float]:
    """Relative output error each of ``layers`` (node names of ``reference``) adds in
    ``changed``, over ``feeds`` (one ``{input: array}`` per batch; ``rows`` batches, for the
    progress bar). Scratch models go to ``workdir`` and are removed."""
    import onnx

    ref = onnx.load(str(reference))  # the float weights of the layers are needed
    inits = {i.name for i in ref.graph.initializer}
    by_name = {n.name: n for n in ref.graph.node}
    graph_inputs = {i.name for i in ref.graph.input}
    wanted = [by_name[n] for n in layers if n in by_name]
    # (node, its activation inputs, its first output) in the reference graph
    plans = [(n, [x for x in n.input if x and x not in inits], n.output[0]) for n in wanted]

    available = _tensor_names(changed)
    measurable = [p for p in plans if all(t in available for t in (*p[1], p[2]))]
    out = {n: math.inf for n in layers}  # unmeasurable: as sensitive as can be
    if not measurable:
        return out
    fetch = sorted({t for _, xs, y in measurable for t in (*xs, y)} - graph_inputs)
    changed_path = workdir / "layer-errors-changed.onnx"
    floats_path = workdir / "layer-errors-float.onnx"
    try:
        _expose(changed, fetch, changed_path)
        q = _session(changed_path)
        # The dtypes ONNX Runtime gives the exposed tensors type the float layers' inputs.
        dtypes = {v.name: _onnx_type(v.type) for v in (*q.get_inputs(), *q.get_outputs())}
        _float_layers(ref, measurable, floats_path, dtypes)
        del ref
        err, norm = _accumulate(q, _session(floats_path), measurable, fetch, feeds, progress, rows)
    finally:
        for scratch in (changed_path, floats_path, floats_path.with_name(floats_path.name + ".data")):
            scratch.unlink(missing_ok=True)
    for i, (node, _, _) in enumerate(measurable):
        out[node.name] = (
            float(math.sqrt(err[i] / norm[i])) if norm[i] > 0 else (0.0 if err[i] == 0 else math.inf)
        )
    return out


def _tensor_names(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}


def _expose(src: Path, tensors: list[str], dst: Path) -> None:
    """``src`` with ``tensors`` added to its graph outputs, written to ``dst``."""
    import onnx

    model = onnx.load(str(src))
    have = {o.name for o in model.graph.output}
    # A name alone is enough: ONNX Runtime infers the type of a graph output.
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in have)
    save_onnx(model, dst)


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _onnx_type(ort_type: str) -> int:
    """ONNX Runtime's ``tensor(float)`` -> ``onnx.TensorProto.FLOAT``."""
    import onnx

    return int(onnx.TensorProto.DataType.Value(ort_type.removeprefix("tensor(").removesuffix(")").upper()))


def _float_layers(ref, plans: list, dst: Path, dtypes: dict[str, int]) -> None:
    """One graph holding a float copy of each layer, reading renamed inputs ``L<i>:<name>``
    and writing ``L<i>:out``; built inside ``ref`` (no second copy of its weights)."""
    import onnx

    used: set[str] = set()
    nodes = []
    inputs = []
    for i, (node, xs, _) in enumerate(plans):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        renamed = {x: f"L{i}:{x}" for x in xs}
        copy.ClearField("input")
        copy.input.extend(renamed.get(x, x) for x in node.input)
        copy.ClearField("output")
        copy.output.extend(
            [f"L{i}:out", *(f"L{i}:unused{j}" if o else "" for j, o in enumerate(node.output[1:]))]
        )
        used.update(x for x in node.input if x and x not in renamed)
        nodes.append(copy)
        inputs += [onnx.helper.make_tensor_value_info(renamed[x], dtypes[x], None) for x in xs]
    g = ref.graph
    g.ClearField("node")
    g.node.extend(nodes)
    # Removing the other initializers one by one keeps the kept ones in place (no copy).
    for idx in range(len(g.initializer) - 1, -1, -1):
        if g.initializer[idx].name not in used:
            del g.initializer[idx]
    g.ClearField("input")
    g.input.extend(inputs)
    g.ClearField("output")
    g.output.extend(onnx.ValueInfoProto(name=f"L{i}:out") for i in range(len(plans)))
    g.ClearField("value_info")
    # Weights to a side file, tensor by tensor: no second, serialized copy of them in memory.
    onnx.save(ref, str(dst), save_as_external_data=True, location=dst.name + ".data", size_threshold=1024)


def _accumulate(q, f, plans, fetch, feeds, progress: Progress, rows):
    q_inputs = [i.name for i in q.get_inputs()]
    f_inputs = {i.name for i in f.get_inputs()}
    err, norm = np.zeros(len(plans)), np.zeros(len(plans))
    with progress.task("layer sensitivity: one pass over the calibration rows", total=rows) as advance:
        for feed in feeds:
            feed = {k: v for k, v in feed.items() if k in q_inputs}
            seen = dict(zip(fetch, q.run(fetch, feed), strict=True))
            seen.update(feed)
            layer_feed = {}
            for i, (_, xs, _) in enumerate(plans):
                for x in xs:
                    if f"L{i}:{x}" in f_inputs:  # an input ORT found unused is not an input
                        layer_feed[f"L{i}:{x}"] = seen[x]
            outs = f.run([f"L{i}:out" for i in range(len(plans))], layer_feed)
            for i, (_, _, y) in enumerate(plans):
                want = outs[i].astype(np.float64)
                err[i] += float(np.sum((seen[y].astype(np.float64) - want) ** 2))
                norm[i] += float(np.sum(want**2))
            del seen, layer_feed, outs  # nothing of this batch outlives it
            advance()
    return err, norm
