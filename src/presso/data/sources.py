"""Reading user data files into a :class:`Dataset` keyed by the model's input names."""

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


def load_data(
    path: str | Path,
    input_names: list[str],
    target: str | None = None,
    tokenizer: Any = None,
    seq_len: int = 128,
    group: str | None = None,
) -> Dataset:
    """Rows of ``path``; ``target`` / ``group`` name a table's label and query-id columns
    (an .npz holds them in arrays ``y`` and ``group``)."""
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
        return _from_npz(path, input_names)
    if suffix in (".csv", ".parquet"):
        return _from_table(path, input_names, target, group)
    if group is not None:
        raise PressoError("--group applies to .csv/.parquet and .npz data, not to text files.")
    if suffix == ".txt":
        return from_texts(_read_lines(path), input_names, tokenizer, seq_len, source=str(path))
    raise PressoError(f"Unsupported data file '{path.name}'. Supported: {SUPPORTED}.")


def _check_finite(name: str, array: np.ndarray, source: Path | str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(len(array), -1))[0])
            raise PressoError(
                f"'{source}': array '{name}' has {int(bad.sum())} NaN/inf values in "
                f"{len(rows)} rows (first row {rows[0]}). Drop or impute them first."
            )


def _as_model_dtype(array: np.ndarray, name: str = "X") -> np.ndarray:
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


def _from_npz(path: Path, input_names: list[str]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}' as .npz: {exc}") from exc
    if set(input_names) <= set(arrays):
        inputs = {n: arrays[n] for n in input_names}
    elif len(input_names) == 1 and "X" in arrays:
        inputs = {input_names[0]: arrays["X"]}
    elif len(input_names) == 1:
        raise PressoError(
            f"'{path}' has arrays {sorted(arrays)}; the model needs an array 'X'. "
            "Save with np.savez(path, X=inputs, y=targets)."
        )
    else:
        missing = [n for n in input_names if n not in arrays]
        save = ", ".join(f"{n}=..." for n in input_names)
        raise PressoError(
            f"'{path}' has no array for the model's input(s) {missing}: it has {sorted(arrays)}, and "
            f"forward takes {input_names}. Save one array per input: np.savez(path, {save}, y=targets)."
        )
    target = arrays.get("y")
    for name, a in {**inputs, **({"y": target} if target is not None else {})}.items():
        rows_of(name, a)
        _check_finite(name, a, path)
    inputs = {n: _as_model_dtype(a, n) for n, a in inputs.items()}
    if target is not None and np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float32)
    groups = arrays.get("group")
    if groups is not None and groups.ndim != 1:
        raise PressoError(
            f"'{path}': array 'group' must hold one query id per row; it has shape {groups.shape}."
        )
    return Dataset(inputs=inputs, target=target, source=str(path), groups=groups)


def _from_table(path: Path, input_names: list[str], target: str | None, group: str | None = None) -> Dataset:
    try:
        import pandas as pd
    except ImportError:
        raise PressoError("Reading .csv/.parquet needs pandas: pip install 'presso[data]'.") from None
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except ImportError:
        raise PressoError("Reading .parquet needs pyarrow: pip install 'presso[data]'.") from None
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}': {reason(exc)}") from exc
    if len(input_names) != 1:
        raise PressoError(
            f"A table feeds one input, but the model takes {input_names}. Use an .npz with one array per input."
        )
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
    return Dataset(
        inputs={input_names[0]: x},
        target=y,
        source=str(path),
        feature_names=[str(c) for c in frame.columns],
        groups=groups,
    )


def _pop_column(frame, name: str | None, what: str, path: Path) -> np.ndarray | None:
    """The column ``name`` taken out of ``frame`` (None: no name given)."""
    if name is None:
        return None
    if name not in frame.columns:
        raise PressoError(
            f"{what} '{name}' not found in '{path}'. Columns: {', '.join(map(str, frame.columns))}."
        )
    return frame.pop(name).to_numpy()


def _read_lines(path: Path) -> list[str]:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise PressoError(f"'{path}' is not UTF-8 text. Save it as UTF-8, one text per line.") from None
    return [ln for ln in lines if ln]


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
