"""The float inputs of chosen layers, call by call, as dynamic int8 quantizes them.

ONNX Runtime's dynamic int8 takes each activation's range from the whole tensor of one
call, so the error of a layer can only be emulated call by call: a batch-1 call is what a
real-time service makes (and what presso scores with).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALLS = 16  # batch-1 calls whose activations are read (their ranges are per call)


def per_call_inputs(src: Path, tensors: list[str], feeds, calls: int = CALLS) -> dict[str, list[np.ndarray]]:
    """For each float tensor of ``src`` named in ``tensors``: its values in each of the first
    ``calls`` of ``feeds`` (input dicts), as (rows, last axis) arrays."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from presso.runtime.session import default_threads

    probe = onnx.load(str(src))
    known = {o.name for o in probe.graph.output} | {i.name for i in probe.graph.input}
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        for t in sorted(set(tensors))
        if t not in known
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = default_threads()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del probe
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    out: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for i, feed in enumerate(feeds):
        if i == calls:
            break
        values = dict(zip(names, sess.run(None, {k: v for k, v in feed.items() if k in inputs}), strict=True))
        values.update(feed)
        for t in out:
            out[t].append(np.asarray(values[t], np.float32).reshape(-1, values[t].shape[-1]))
    return out
