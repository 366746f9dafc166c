"""Data files read in chunks into a :class:`RowSample`, so that memory holds at most the
memory budget whatever the file's size: tables and arrays larger than the budget, and
every text file (its lines become much larger token rows). A file that fits comes back
whole, in order, equal to what the in-memory readers give."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from presso.data.dataset import Dataset
from presso.data.sample import RowSample, SampleInfo
from presso.data.sources import (
    as_model_dtype,
    check_finite,
    check_group_ids,
    from_texts,
    npz_inputs,
    one_table_input,
    pandas_module,
    table_columns,
)
from presso.errors import PressoError, reason

# The sample holds at most an eighth of the budget and a chunk about a sixteenth: the copies
# made while a chunk joins the sample (measured: 3.3x the sample at its peak), the chunk
# and pandas' parser (5-8 MB of its own) stay inside the budget. Measured with
# tests/robustness/test_resource_bounds.py on files 10x the budget: reading raised the peak
# RSS by 8 MB (.npz, 16 MB budget) and 23 MB (.csv, 32 MB budget).
SAMPLE_SHARE, CHUNK_SHARE = 8, 16


def table_bytes(path: Path) -> int:
    """What a table's rows take in memory, about (a CSV value of 2 characters, '1,', takes
    8 while parsed): a CSV counts double its size; a Parquet file, 8 bytes a value."""
    if path.suffix.lower() == ".csv":
        return 2 * path.stat().st_size
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
    except ImportError:
        raise PressoError("Reading .parquet needs pyarrow: pip install 'presso[data]'.") from None
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}': {reason(exc)}") from exc
    return 8 * meta.num_rows * meta.num_columns


def _sample(budget: int, row_bytes: int, seed: int) -> RowSample:
    return RowSample(max(1, budget // SAMPLE_SHARE // max(1, row_bytes)), seed)


def _chunk_rows(budget: int, row_bytes: int) -> int:
    return max(1, budget // CHUNK_SHARE // max(1, row_bytes))


def sampled_table(
    path: Path, input_names: list[str], target: str | None, group: str | None, budget: int, seed: int
) -> Dataset:
    """A seeded sample of a CSV or Parquet table's rows that fits ``budget`` bytes."""
    one_table_input(input_names)
    columns = _table_header(path)
    row_bytes = 8 * len(columns)
    sample = _sample(budget, row_bytes, seed)
    names: list[str] = []
    for frame in _table_chunks(path, _chunk_rows(budget, row_bytes)):
        x, y, groups, names = table_columns(frame, target, group, path)
        rows = {
            "x": x,
            **({"y": y} if y is not None else {}),
            **({"group": groups} if groups is not None else {}),
        }
        sample.add(rows, groups)
    kept = sample.result()
    return Dataset(
        inputs={input_names[0]: kept["x"]},
        target=kept.get("y"),
        source=str(path),
        feature_names=names,
        groups=kept.get("group"),
        sample=_info(sample, budget),
    )


def _table_header(path: Path) -> list[str]:
    pd = pandas_module()
    try:
        if path.suffix.lower() == ".csv":
            return list(pd.read_csv(path, nrows=0).columns)
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}': {reason(exc)}") from exc


def _table_chunks(path: Path, rows: int) -> Iterator[Any]:
    pd = pandas_module()
    try:
        if path.suffix.lower() == ".csv":
            with pd.read_csv(path, chunksize=rows) as reader:
                yield from reader
        else:
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                yield batch.to_pandas()
    except PressoError:
        raise
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}': {reason(exc)}") from exc


# ------------------------------------------------------------------ .npz


def npz_bytes(path: Path, input_names: list[str]) -> int:
    """What the .npz's rows take in memory once read as the model takes them."""
    headers = _npz_headers(path)
    _, used = _npz_arrays(headers, input_names, path)
    return sum(_row_bytes(headers[name]) * headers[name][0][0] for name in used if headers[name][0])


def _npz_arrays(
    headers: dict[str, tuple], input_names: list[str], path: Path
) -> tuple[dict[str, str], list[str]]:
    """(input name -> its array, every array a run reads: the inputs', then y and group)."""
    inputs = npz_inputs(list(headers), input_names, path)
    return inputs, [*dict.fromkeys(inputs.values()), *(k for k in ("y", "group") if k in headers)]


def _row_bytes(header: tuple) -> int:
    shape, _, dtype = header
    itemsize = 4 if dtype.kind in "fb" else 8 if dtype.kind in "iu" else dtype.itemsize
    return int(np.prod(shape[1:], dtype=np.int64)) * itemsize


def _npz_headers(path: Path) -> dict[str, tuple]:
    """name -> (shape, fortran_order, dtype) of each array of the .npz, from its header only."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if member.endswith(".npy"):
                    with zf.open(member) as f:
                        headers[member[: -len(".npy")]] = _read_header(f)
    except PressoError:
        raise
    except Exception as exc:
        raise PressoError(f"Cannot read '{path}' as .npz: {reason(exc)}") from exc
    return headers


def _read_header(f) -> tuple:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        return fmt.read_array_header_1_0(f)
    if version == (2, 0):
        return fmt.read_array_header_2_0(f)
    raise PressoError(f"An array in the .npz has .npy format {version}; save it again with np.savez.")


def sampled_npz(path: Path, input_names: list[str], budget: int, seed: int) -> Dataset:
    """A seeded sample of an .npz's rows that fits ``budget`` bytes, read in chunks from
    the archive (compressed or not) without loading any array whole."""
    headers = _npz_headers(path)
    inputs, arrays = _npz_arrays(headers, input_names, path)
    rows = {name: _rows_in(path, name, headers[name]) for name in arrays}
    if len(set(rows.values())) != 1:
        raise PressoError(
            f"'{path}': the arrays have different numbers of rows: {rows}. "
            "Give arrays with one row per example on the first axis."
        )
    if "group" in headers:
        check_group_ids(headers["group"][0], path)
    row_bytes = sum(_row_bytes(headers[a]) for a in arrays)
    sample = _sample(budget, row_bytes, seed)
    chunk = _chunk_rows(budget, row_bytes)
    with zipfile.ZipFile(path) as zf:
        files = {a: zf.open(f"{a}.npy") for a in arrays}
        try:
            for f in files.values():
                _read_header(f)
            for start in range(0, next(iter(rows.values())), chunk):
                part = {a: _read_rows(f, headers[a], chunk, path) for a, f in files.items()}
                for name in inputs.values():
                    check_finite(name, part[name], path, first_row=start)
                if "y" in part:
                    check_finite("y", part["y"], path, first_row=start)
                sample.add(part, part.get("group"))
        finally:
            for f in files.values():
                f.close()
    kept = sample.result()
    target = kept.get("y")
    if target is not None and np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float32)
    return Dataset(
        inputs={n: as_model_dtype(kept[a], n) for n, a in inputs.items()},
        target=target,
        source=str(path),
        groups=kept.get("group"),
        sample=_info(sample, budget),
    )


def _rows_in(path: Path, name: str, header: tuple) -> int:
    shape, fortran, dtype = header
    if not shape:
        raise PressoError(
            f"Array {name!r} is a single value (shape ()); give one row per example on the first axis."
        )
    if dtype.hasobject:
        raise PressoError(f"'{path}': array {name!r} holds Python objects; save numbers only.")
    if fortran and len(shape) > 1:
        raise PressoError(
            f"'{path}': array {name!r} is stored column-major, which cannot be read row by row; "
            "save np.ascontiguousarray(...) of it."
        )
    return int(shape[0])


def _read_rows(f, header: tuple, rows: int, path: Path) -> np.ndarray:
    shape, _, dtype = header
    per_row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    data = f.read(rows * per_row)
    if len(data) % max(1, per_row) or not data:
        raise PressoError(f"'{path}' ends in the middle of an array: the file is truncated.")
    return np.frombuffer(data, dtype=dtype).reshape(-1, *shape[1:])


# ------------------------------------------------------------------ .txt


def sampled_texts(
    path: Path, input_names: list[str], tokenizer: Any, seq_len: int, budget: int, seed: int
) -> Dataset:
    """The file's non-empty lines, or a seeded sample of them when their token rows would
    not fit ``budget`` bytes: only the kept lines are tokenized."""
    if tokenizer is None:
        raise PressoError("Text data needs a text model: give a Hugging Face model folder with a tokenizer.")
    row_bytes = 8 * seq_len * len(input_names)
    sample = _sample(budget, row_bytes, seed)
    for lines in _line_chunks(path, _chunk_rows(budget, row_bytes)):
        sample.add({"text": np.array(lines, dtype=object)})
    if not sample.seen:
        raise PressoError(f"'{path}' has no non-empty lines of text.")
    texts = [str(t) for t in sample.result()["text"]]
    data = from_texts(texts, input_names, tokenizer, seq_len, source=str(path))
    data.sample = _info(sample, budget)
    return data


def _line_chunks(path: Path, rows: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text:
                    chunk.append(text)
                    if len(chunk) >= rows:
                        yield chunk
                        chunk = []
    except UnicodeDecodeError:
        raise PressoError(f"'{path}' is not UTF-8 text. Save it as UTF-8, one text per line.") from None
    if chunk:
        yield chunk


def _info(sample: RowSample, budget: int) -> SampleInfo | None:
    return SampleInfo(rows_in_file=sample.seen, memory_budget_bytes=budget) if sample.sampled else None
