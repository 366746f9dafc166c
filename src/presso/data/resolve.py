"""Turn the ``data=`` a user gave (path, arrays, texts, Dataset) into a Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from presso.data import streamed
from presso.data.dataset import Dataset
from presso.data.sample import DEFAULT_MEMORY_BUDGET
from presso.data.sources import SUPPORTED, from_npz, from_table, from_texts
from presso.errors import PressoError
from presso.model.loaded import LoadedModel


def resolve_data(
    data: Any,
    model: LoadedModel,
    target: str | None = None,
    seq_len: int = 128,
    group: str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
) -> Dataset:
    """``memory_budget`` and ``seed``: how many bytes of a file's rows to keep, and the seed
    of the sample taken when they do not all fit (:func:`load_data`)."""
    if isinstance(data, Dataset):
        return data
    if data is None:
        raise PressoError(
            "No data given: presso needs held-out rows to calibrate and to measure quality. "
            "Pass --data FILE (.npz, .csv/.parquet with --target, .txt) or use --example NAME."
        )
    if isinstance(data, str | Path):
        return load_data(
            data,
            model.input_names,
            target=target,
            tokenizer=model.tokenizer,
            seq_len=seq_len,
            group=group,
            memory_budget=memory_budget,
            seed=seed,
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


def load_data(
    path: str | Path,
    input_names: list[str],
    target: str | None = None,
    tokenizer: Any = None,
    seq_len: int = 128,
    group: str | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
) -> Dataset:
    """Rows of ``path``; ``target`` / ``group`` name a table's label and query-id columns
    (an .npz holds them in arrays ``y`` and ``group``). A file whose rows would take more
    than ``memory_budget`` bytes is streamed, and a seeded uniform sample of its rows that
    fits is kept (:mod:`presso.data.sample`; the dataset's ``sample`` says so)."""
    path = Path(path)
    if not path.is_file():
        raise PressoError(f"Data file '{path}' not found. Supported: {SUPPORTED}.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if target is not None or group is not None:
            raise PressoError(
                "--target and --group apply to .csv/.parquet data; an .npz holds its targets in "
                "array 'y' and its query ids in array 'group'."
            )
        if streamed.npz_bytes(path, input_names) > memory_budget:
            return streamed.sampled_npz(path, input_names, memory_budget, seed)
        return from_npz(path, input_names)
    if suffix in (".csv", ".parquet"):
        if streamed.table_bytes(path) > memory_budget:
            return streamed.sampled_table(path, input_names, target, group, memory_budget, seed)
        return from_table(path, input_names, target, group)
    if group is not None:
        raise PressoError("--group applies to .csv/.parquet and .npz data, not to text files.")
    if suffix == ".txt":
        return streamed.sampled_texts(path, input_names, tokenizer, seq_len, memory_budget, seed)
    raise PressoError(f"Unsupported data file '{path.name}'. Supported: {SUPPORTED}.")
