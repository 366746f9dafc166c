"""Reading user data files that fit in memory into a :class:`Dataset` keyed by the model's
input names, and the checks the streamed readers (:mod:`presso.data.streamed`) share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from presso.data.dataset import Dataset, rows_of
from presso.errors import PressoError, reason

SUPPORTED = (
    ".npz (arrays X and optional y, group), .csv or .parquet (with --target COLUMN, --group COLUMN), "
    ".txt (one text per line)"
)


def check_finite(name: str, array: np.ndarray, source: Path | str, first_row: int = 0) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(len(array), -1))[0])
            raise PressoError(
                f"'{source}': array '{name}' has {int(bad.sum())} NaN/inf values in "
                f"{len(rows)} rows (first row {first_row + rows[0]}). Drop or impute them first."
            )


def as_model_dtype(array: np.ndarray, name: str = "X") -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating) or array.dtype == bool:
        with np.errstate(over="ignore"):
            out = array.astype(np.float32)
        if array.dtype != bool and not np.isfinite(out).all():  # finite in float64, not in 32 bits
            raise PressoError(
                f"Array {name!r} has values beyond float32's range (largest magnitude "
                f"{float(np.abs(array).max()):.3g}, float32 stops at 3.4e38): rescale them."
            )
        return out
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    raise PressoError(f"Arrays must be numeric; got dtype {array.dtype}.")


def from_npz(path: Path, input_names: list[str]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}' as .npz: {exc}") from exc
    inputs = {n: arrays[a] for n, a in npz_inputs(list(arrays), input_names, path).items()}
    target = arrays.get("y")
    for name, a in {**inputs, **({"y": target} if target is not None else {})}.items():
        rows_of(name, a)
        check_finite(name, a, path)
    inputs = {n: as_model_dtype(a, n) for n, a in inputs.items()}
    if target is not None and np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float32)
    groups = arrays.get("group")
    if groups is not None:
        check_group_ids(groups.shape, path)
    return Dataset(inputs=inputs, target=target, source=str(path), groups=groups)


def npz_inputs(arrays: list[str], input_names: list[str], path: Path) -> dict[str, str]:
    """Which array of the .npz feeds each of the model's inputs."""
    if set(input_names) <= set(arrays):
        return {n: n for n in input_names}
    if len(input_names) == 1 and "X" in arrays:
        return {input_names[0]: "X"}
    if len(input_names) == 1:
        raise PressoError(
            f"'{path}' has arrays {sorted(arrays)}; the model needs an array 'X'. "
            "Save with np.savez(path, X=inputs, y=targets)."
        )
    missing = [n for n in input_names if n not in arrays]
    save = ", ".join(f"{n}=..." for n in input_names)
    raise PressoError(
        f"'{path}' has no array for the model's input(s) {missing}: it has {sorted(arrays)}, and "
        f"forward takes {input_names}. Save one array per input: np.savez(path, {save}, y=targets)."
    )


def check_group_ids(shape: tuple, path: Path) -> None:
    if len(shape) != 1:
        raise PressoError(f"'{path}': array 'group' must hold one query id per row; it has shape {shape}.")


def pandas_module():
    try:
        import pandas as pd
    except ImportError:
        raise PressoError("Reading .csv/.parquet needs pandas: pip install 'presso[data]'.") from None
    return pd


def from_table(path: Path, input_names: list[str], target: str | None, group: str | None = None) -> Dataset:
    pd = pandas_module()
    one_table_input(input_names)
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except ImportError:
        raise PressoError("Reading .parquet needs pyarrow: pip install 'presso[data]'.") from None
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}': {reason(exc)}") from exc
    x, y, groups, names = table_columns(frame, target, group, path)
    return Dataset(inputs={input_names[0]: x}, target=y, source=str(path), feature_names=names, groups=groups)


def one_table_input(input_names: list[str]) -> None:
    if len(input_names) != 1:
        raise PressoError(
            f"A table feeds one input, but the model takes {input_names}. Use an .npz with one array per input."
        )


def table_columns(
    frame, target: str | None, group: str | None, path: Path
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """(features as float32, target, group ids, feature names) of a table's rows, each
    checked: numeric features, no missing or infinite values."""
    pd = pandas_module()
    y = _pop_column(frame, target, "Column", path)
    groups = _pop_column(frame, group, "Group column", path)
    if groups is not None and pd.isna(groups).any():
        raise PressoError(f"Group column '{group}' of '{path}' has missing values. Drop those rows.")
    non_numeric = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise PressoError(
            f"'{path}' has non-numeric feature columns {non_numeric}; encode them as numbers "
            "or name the label column with --target."
        )
    missing = frame.isna().sum()
    if missing.any():
        cols = {str(c): int(n) for c, n in missing.items() if n}
        raise PressoError(f"'{path}' has missing values in columns {cols}. Drop or impute them first.")
    if y is not None:
        if pd.isna(y).any():
            raise PressoError(f"Target column '{target}' of '{path}' has missing values. Drop those rows.")
        y = y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y
        if y.dtype == np.float32 and not np.isfinite(y).all():
            raise PressoError(f"Target column '{target}' of '{path}' has infinite values. Drop those rows.")
    with np.errstate(over="ignore"):
        x = frame.to_numpy(dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        infinite = [str(frame.columns[j]) for j in np.nonzero(bad.any(axis=0))[0]]
        raise PressoError(
            f"'{path}' has infinite values, or values beyond float32's range (3.4e38), in columns "
            f"{infinite}. Drop or rescale them first."
        )
    return x, y, groups, [str(c) for c in frame.columns]


def _pop_column(frame, name: str | None, what: str, path: Path) -> np.ndarray | None:
    """The column ``name`` taken out of ``frame`` (None: no name given)."""
    if name is None:
        return None
    if name not in frame.columns:
        raise PressoError(
            f"{what} '{name}' not found in '{path}'. Columns: {', '.join(map(str, frame.columns))}."
        )
    return frame.pop(name).to_numpy()


def from_texts(
    texts: list[str], input_names: list[str], tokenizer: Any, seq_len: int = 128, source: str = "texts"
) -> Dataset:
    if tokenizer is None:
        raise PressoError("Text data needs a text model: give a Hugging Face model folder with a tokenizer.")
    if not texts:
        raise PressoError(f"'{source}' has no non-empty lines of text.")
    # Fixed-length padding: every row has the same shape, so batches and latency
    # measurements are comparable across models.
    inputs = encode_texts(texts, input_names, tokenizer, seq_len)
    return Dataset(inputs=inputs, target=None, source=source, texts=list(texts))


def encode_texts(
    texts: list[str], input_names: list[str], tokenizer: Any, seq_len: int = 128, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """The model's inputs for ``texts``: truncated at ``seq_len`` tokens, padded to ``pad_to``
    (default ``seq_len``; training batches pad to their own longest text)."""
    length = seq_len if pad_to is None else pad_to
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=min(seq_len, length), return_tensors="np"
    )
    return model_inputs(enc, input_names)


def model_inputs(enc: Any, input_names: list[str]) -> dict[str, np.ndarray]:
    """The model's inputs from a tokenizer's arrays ``enc``: int64, and one segment of
    ``token_type_ids`` when the tokenizer gives none."""
    inputs = {}
    for name in input_names:
        if name in enc:
            inputs[name] = enc[name].astype(np.int64, copy=False)
        elif name == "token_type_ids":
            inputs[name] = np.zeros_like(enc["input_ids"], dtype=np.int64)
        else:
            raise PressoError(
                f"The model takes input '{name}' that its tokenizer does not give "
                f"({', '.join(enc)}); pass a dict of arrays instead of strings."
            )
    return inputs
