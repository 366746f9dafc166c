"""What ``POST /predict`` takes and gives, checked against the model before it is queued.

A request's ``inputs`` are texts (a text model: one string or a list), rows of a
single-input model (one row or a list of rows, nested lists of numbers), or an object of
named arrays (one per model input, rows along the first axis). Everything a client can
get wrong is found here and answered with one line (:class:`BadInput`), so a batch never
fails because of another caller's request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from presso.measure.metrics import anomaly_scores, softmax
from presso.runtime.session import INPUT_DTYPES


class BadInput(Exception):
    """A request the server refuses, with the HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, dtype and shape (None where any size goes)."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[InputSpec, ...]
    text: bool  # a tokenizer comes with the model: strings are welcome
    task: str | None

    @classmethod
    def of(cls, predictor) -> ModelSpec:
        specs = []
        for i in predictor.session.get_inputs():
            dtype: Any = INPUT_DTYPES.get(i.type)  # None: refused with a reason when asked for
            shape = tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape)
            specs.append(InputSpec(i.name, dtype, shape))
        return cls(tuple(specs), predictor.tokenizer is not None, predictor.task)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs]


@dataclass(frozen=True)
class Rows:
    """One request's rows in the model's terms: texts, or named arrays (rows on axis 0)."""

    n: int
    texts: list[str] | None = None
    arrays: dict[str, np.ndarray] | None = None

    def group(self) -> Any:
        """Requests of one group stack into one batch (same kind, same row shapes)."""
        if self.texts is not None:
            return "texts"
        assert self.arrays is not None
        return tuple((k, v.shape[1:], v.dtype.str) for k, v in self.arrays.items())


def parse_inputs(inputs: Any, spec: ModelSpec, max_rows: int) -> Rows:
    """The request's ``inputs`` as rows for the model, or :class:`BadInput`."""
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], str)):
        return _texts(inputs, spec, max_rows)
    if isinstance(inputs, dict):
        return _named(inputs, spec, max_rows)
    if isinstance(inputs, list):
        if not inputs:
            raise BadInput(422, "'inputs' is empty: send at least one row.")
        if spec.text:
            raise BadInput(
                422, "This model takes text: send a string or a list of strings (or named token arrays)."
            )
        if len(spec.inputs) != 1:
            raise BadInput(
                422,
                f"This model takes {len(spec.inputs)} inputs ({', '.join(spec.names)}): send "
                '"inputs" as an object of named arrays.',
            )
        arrays = {spec.inputs[0].name: _array(inputs, spec.inputs[0])}
        return _rows(arrays, max_rows)
    raise BadInput(
        422,
        f"'inputs' must be {_wanted(spec)}; got a JSON {type(inputs).__name__}.",
    )


def _wanted(spec: ModelSpec) -> str:
    if spec.text:
        return "a string or a list of strings"
    if len(spec.inputs) == 1:
        return "a row or a list of rows (lists of numbers)"
    return f"an object of named arrays ({', '.join(spec.names)})"


def _texts(inputs: str | list, spec: ModelSpec, max_rows: int) -> Rows:
    if not spec.text:
        raise BadInput(422, f"This model takes numbers, not text: send {_wanted(spec)}.")
    texts = [inputs] if isinstance(inputs, str) else inputs
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise BadInput(422, f"inputs[{bad}] is not a string: send a list of strings.")
    if len(texts) > max_rows:
        raise BadInput(413, f"{len(texts)} texts in one request; the server takes at most {max_rows}.")
    return Rows(n=len(texts), texts=texts)


def _named(inputs: dict, spec: ModelSpec, max_rows: int) -> Rows:
    unknown = sorted(set(inputs) - set(spec.names))
    missing = [n for n in spec.names if n not in inputs]
    if unknown or missing:
        parts = ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise BadInput(422, f"Named inputs {'; '.join(parts)}: the model takes {spec.names}.")
    arrays = {s.name: _array(inputs[s.name], s) for s in spec.inputs}
    return _rows(arrays, max_rows)


def _rows(arrays: dict[str, np.ndarray], max_rows: int) -> Rows:
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        sizes = {k: len(a) for k, a in arrays.items()}
        raise BadInput(422, f"The named inputs have different numbers of rows: {sizes}.")
    n = counts.pop()
    if n == 0:
        raise BadInput(422, "'inputs' has no rows: send at least one.")
    if n > max_rows:
        raise BadInput(413, f"{n} rows in one request; the server takes at most {max_rows}.")
    return Rows(n=n, arrays=arrays)


def _array(value: Any, spec: InputSpec) -> np.ndarray:
    """``value`` as a batch of rows of input ``spec``: one row gets its batch axis."""
    if spec.dtype is None:
        raise BadInput(422, f"Input '{spec.name}' has a type the server cannot fill from JSON.")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raw = None
    kinds = "iuf" + ("b" if spec.dtype is np.bool_ else "")
    if raw is not None and raw.dtype.kind == "O" and _integers(raw):
        raise BadInput(422, f"Input '{spec.name}' has numbers out of the range of {np.dtype(spec.dtype)}.")
    if raw is None or raw.dtype.kind not in kinds:
        raise BadInput(422, f"Input '{spec.name}' must be numbers in nested lists of equal lengths.")
    if raw.dtype.kind == "f" and not bool(np.isfinite(raw).all()):
        raise BadInput(422, f"Input '{spec.name}' holds NaN or infinity: send finite numbers.")
    rank = len(spec.shape)
    raw = _unflattened(raw, spec.shape)
    if raw.ndim == rank - 1:
        raw = raw[None]
    if raw.ndim != rank:
        row = [d if d is not None else "n" for d in spec.shape[1:]]
        raise BadInput(
            422,
            f"Input '{spec.name}' has {raw.ndim} dimension(s); the model takes rows of shape {row} "
            f"(one row, or a list of rows).",
        )
    wrong = [
        (axis, want, got)
        for axis, (want, got) in enumerate(zip(spec.shape, raw.shape, strict=True))
        if axis > 0 and want is not None and want != got
    ]
    if wrong:
        axis, want, got = wrong[0]
        raise BadInput(422, f"Input '{spec.name}' has {got} values on axis {axis}; the model takes {want}.")
    _check_range(raw, spec)
    return np.ascontiguousarray(raw.astype(spec.dtype))


def _integers(raw: np.ndarray) -> bool:
    """Whether an object array holds whole numbers only (numpy's dtype for integers
    beyond 64 bits)."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in raw.reshape(-1)[:100_000])


def _check_range(raw: np.ndarray, spec: InputSpec) -> None:
    """Numbers the input's dtype holds: whole numbers within an integer type's range, floats
    within a float type's (1e300 is no float32)."""
    if np.dtype(spec.dtype).kind in "iu":
        if raw.dtype.kind == "f" and not bool((raw == np.round(raw)).all()):
            raise BadInput(422, f"Input '{spec.name}' takes whole numbers (token ids); got fractions.")
        info = np.iinfo(spec.dtype)
        # float(info.max) rounds up to 2**63 for int64: a float at or past max + 1 is out
        if raw.size and (
            raw.min() < info.min
            or (raw.max() >= float(info.max) + 1 if raw.dtype.kind == "f" else raw.max() > info.max)
        ):
            raise BadInput(
                422, f"Input '{spec.name}' has numbers out of the range of {np.dtype(spec.dtype)}."
            )
    elif np.dtype(spec.dtype).kind == "f" and raw.size:
        limit = float(np.finfo(spec.dtype).max)
        if float(np.abs(raw).max()) > limit:
            raise BadInput(422, f"Input '{spec.name}' has numbers beyond {np.dtype(spec.dtype)}'s range.")


def _unflattened(raw: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    """Flat rows (a row of 64 numbers for a model that takes 1 x 8 x 8) in the model's row
    shape, where its row shape is fixed and the sizes agree; anything else as it came."""
    row = [d for d in shape[1:] if d is not None]
    if len(row) < 2 or len(row) != len(shape) - 1 or raw.ndim not in (1, 2):
        return raw
    size = math.prod(row)
    if raw.ndim == 1 and raw.shape[0] == size:
        return raw.reshape(1, *row)
    if raw.ndim == 2 and raw.shape[1] == size:
        return raw.reshape(len(raw), *row)
    return raw


def merge(requests: list[Rows]) -> Rows:
    """The rows of requests of one :meth:`Rows.group`, stacked in order."""
    if len(requests) == 1:
        return requests[0]
    n = sum(r.n for r in requests)
    if requests[0].texts is not None:
        return Rows(n=n, texts=[t for r in requests for t in r.texts or ()])
    names = list(requests[0].arrays or {})
    return Rows(n=n, arrays={k: np.concatenate([(r.arrays or {})[k] for r in requests]) for k in names})


def response_body(task: str | None, out: np.ndarray, rows: Rows) -> bytes:
    """The JSON answer to one request: its outputs, one per row, and what its task adds."""
    body: dict[str, Any] = {"task": task, "outputs": _listed(out)}
    if task == "classification" and out.ndim == 2 and out.shape[1] >= 2:
        probs = out if _probabilities(out) else softmax(out.astype(np.float64)).astype(np.float32)
        body["labels"] = probs.argmax(axis=1).tolist()
        body["probabilities"] = _listed(probs)
    elif task == "anomaly":
        try:
            body["scores"] = _listed(anomaly_scores(out, rows.arrays))
        except Exception:  # a model whose output is neither a score nor a reconstruction
            pass
    elif task == "ranking" and out.reshape(len(out), -1).shape[1] == 1:
        body["scores"] = _listed(out.reshape(-1))
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _probabilities(out: np.ndarray) -> bool:
    return bool((out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _listed(a: np.ndarray) -> np.ndarray:
    """``a`` ready for orjson, which writes numpy arrays itself (float32 in float32's
    shortest digits, not float64's 17; NaN and inf as null, since JSON has neither): a
    MiniLM embedding's answer in 8 us instead of the json module's 150 us via tolist()."""
    return np.ascontiguousarray(a)


def _plain(x: Any) -> Any:
    """What orjson cannot write itself: arrays of other dtypes (strings, ...) as lists."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON")
