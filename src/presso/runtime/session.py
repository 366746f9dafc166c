"""ONNX Runtime sessions with pinned, stated threading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from presso.errors import PressoError, reason
from presso.runtime.lengths import MASK, length_batches, real_lengths, trim

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

# Session settings a model needs to run as measured, kept in its own metadata so that
# presso.load() and every presso measurement apply them.
SESSION_CONFIG_KEY = "presso.ort_session_config"


# ONNX Runtime's input type names and the numpy dtype that feeds each.
INPUT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def default_threads() -> int:
    """Cores this process may use (affinity-aware), the intra-op thread count presso pins."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def make_session(
    model: str | Path | bytes, threads: int | None = None, spinning: bool = True, name: str | None = None
) -> ort.InferenceSession:
    """An ORT CPU session with ``threads`` intra-op threads and full graph optimisation.

    A model ONNX Runtime refuses raises a :class:`PressoError` naming it (``name``, else the
    file's name) as the model's fault.

    ``spinning=False`` stops idle worker threads from busy-waiting, so sessions measured
    in the same process do not steal each other's cores.
    """
    from presso.runtime.held_import import held_import

    ort = held_import("onnxruntime")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        wanted = session.get_modelmeta().custom_metadata_map.get(SESSION_CONFIG_KEY)
        if wanted:  # the model asks for session settings (see mark_session_config): rebuild with them
            for key, value in json.loads(wanted).items():
                opts.add_session_config_entry(key, str(value))
            session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except MemoryError:
        raise
    except Exception as exc:  # ORT's InvalidGraph, Fail, NotImplemented ... share no base class
        # The model, not the data, is at fault: say so (a float64 weight beside float32
        # inputs passes onnx's checker and is refused here).
        label = name or (None if isinstance(model, bytes) else Path(model).name)
        shown = f"'{label}'" if label else "the model"
        raise PressoError(
            f"ONNX Runtime cannot load {shown}: {reason(exc, 200)}. Re-export the model (e.g. "
            "torch.onnx.export) or fix the graph so ONNX Runtime accepts it."
        ) from exc
    return session


def mark_session_config(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Record ORT session config ``entries`` in ``model``'s metadata (an onnx.ModelProto)."""
    for prop in list(model.metadata_props):
        if prop.key == SESSION_CONFIG_KEY:
            model.metadata_props.remove(prop)
    prop = model.metadata_props.add()
    prop.key, prop.value = SESSION_CONFIG_KEY, json.dumps(entries, sort_keys=True)


def session_input_names(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def run_session(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """First output of ``session`` over all rows of ``inputs``, in batches.

    Padded token rows run at their real length (see :mod:`presso.runtime.lengths`) when
    the model allows it: a dynamic sequence axis and an output of a fixed size per row."""
    names = session_input_names(session)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise KeyError(f"missing inputs {missing}; have {sorted(inputs)}")
    n = len(inputs[names[0]])
    lengths = real_lengths(inputs) if length_free(session) else None
    if lengths is not None:
        out: np.ndarray | None = None
        for rows in length_batches(lengths, batch_size):
            feed = trim({k: inputs[k][rows] for k in names}, int(lengths[rows].max()))
            got = session.run(None, feed)[0]
            if out is None:
                out = np.empty((n, *got.shape[1:]), np.float32)
            out[rows] = got
        assert out is not None  # a dataset has rows
        return out
    outs = []
    for start in range(0, n, batch_size):
        feed = {k: np.ascontiguousarray(inputs[k][start : start + batch_size]) for k in names}
        outs.append(session.run(None, feed)[0])
    return np.concatenate(outs).astype(np.float32, copy=False)


def length_free(session: ort.InferenceSession) -> bool:
    """Whether ``session`` may run token rows cut to their real length: it takes an
    attention mask whose sequence axis is dynamic, and its first output has a fixed size
    per row (a pooled embedding or logits; per-token outputs would change shape)."""
    mask = next((i for i in session.get_inputs() if i.name == MASK), None)
    if mask is None or len(mask.shape) != 2 or isinstance(mask.shape[1], int):
        return False
    return all(isinstance(d, int) and d > 0 for d in session.get_outputs()[0].shape[1:])


def fit_length(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` with token rows cut to their real length padded back (zeros) to the fixed
    sequence length of a model exported with one; unchanged for any other model."""
    out = dict(feed)
    for spec in session.get_inputs():
        a = feed.get(spec.name)
        want = spec.shape[1] if len(spec.shape) == 2 else None
        if a is not None and a.ndim == 2 and isinstance(want, int) and 0 < a.shape[1] < want:
            out[spec.name] = np.pad(a, ((0, 0), (0, want - a.shape[1])))
    return out
