"""Turn the ``data=`` a user gave (path, arrays, texts, Dataset) into a Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from presso.data.dataset import Dataset
from presso.data.sources import from_texts, load_data
from presso.errors import PressoError
from presso.model.loaded import LoadedModel


def resolve_data(
    data: Any, model: LoadedModel, target: str | None = None, seq_len: int = 128, group: str | None = None
) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if data is None:
        raise PressoError(
            "No data given: presso needs held-out rows to calibrate and to measure quality. "
            "Pass --data FILE (.npz, .csv/.parquet with --target, .txt) or use --example NAME."
        )
    if isinstance(data, str | Path):
        return load_data(
            data, model.input_names, target=target, tokenizer=model.tokenizer, seq_len=seq_len, group=group
        )
    if isinstance(data, list | tuple) and data and all(isinstance(t, str) for t in data):
        return from_texts(list(data), model.input_names, model.tokenizer, seq_len)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        ds = resolve_data(x, model, seq_len=seq_len)  # texts keep the asked token length
        return Dataset(inputs=ds.inputs, target=np.asarray(y), source=ds.source, texts=ds.texts)
    if isinstance(data, np.ndarray):
        if len(model.input_names) != 1:
            raise PressoError(f"The model takes inputs {model.input_names}: pass a dict of arrays.")
        return Dataset(inputs={model.input_names[0]: _cast(data)})
    if isinstance(data, dict):
        missing = [n for n in model.input_names if n not in data]
        if missing:
            raise PressoError(f"The data dict lacks inputs {missing}; the model takes {model.input_names}.")
        return Dataset(
            inputs={n: _cast(np.asarray(data[n])) for n in model.input_names},
            target=None if data.get("y") is None else np.asarray(data["y"]),
            groups=None if data.get("group") is None else np.asarray(data["group"]),
        )
    raise PressoError(f"Cannot use a {type(data).__name__} as data: give a file path, arrays or a Dataset.")


def _cast(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise PressoError("The data has NaN/inf values. Drop or impute them first.")
        return a.astype(np.float32)
    return a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a
