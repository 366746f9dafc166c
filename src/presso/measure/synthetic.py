"""Synthetic inputs for timing a model when no data is at hand (``presso bench``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from presso.errors import PressoError

if TYPE_CHECKING:
    import onnxruntime as ort

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


def synthetic_inputs(
    session: ort.InferenceSession,
    batch: int,
    seq_len: int = 128,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random rows shaped for ``session``: the batch axis is ``batch``, other free axes
    ``seq_len`` unless ``shapes`` fixes them; token ids are drawn from a vocabulary-safe
    range and masks are all ones, so a text model runs on full-length sequences."""
    rng = np.random.default_rng(seed)
    feed = {}
    for i in session.get_inputs():
        if shapes and i.name in shapes:
            dims = [batch, *shapes[i.name]]
        else:
            dims = [batch] + [d if isinstance(d, int) and d > 0 else seq_len for d in i.shape[1:]]
        dtype = _DTYPES.get(i.type)
        if dtype is None:
            raise PressoError(f"Input '{i.name}' has type {i.type}, which presso cannot synthesize.")
        a: np.ndarray
        if np.issubdtype(dtype, np.integer):
            if "mask" in i.name:
                a = np.ones(dims, dtype)
            elif "type" in i.name:
                a = np.zeros(dims, dtype)
            else:
                a = rng.integers(1000, 2000, size=dims).astype(dtype)
        elif dtype is np.bool_:
            a = np.ones(dims, dtype)
        else:
            a = rng.standard_normal(dims).astype(dtype)
        feed[i.name] = a
    return feed
