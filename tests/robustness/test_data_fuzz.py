"""Generated data files: whatever an .npz, .csv or .txt holds, presso reads it into rows a
model can take or refuses it in one line, never a traceback, and never unpickles.

The reader (``load_data``, behind every ``--data``) is fuzzed directly; refused files also
go through ``presso compress`` (exit code 2, one line on stderr, no output folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fuzz_cases import refused_by_the_cli, tried
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from presso.data.dataset import Dataset
from presso.data.resolve import load_data
from presso.errors import PressoError

FAST = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
MAX_MESSAGE = 2000
INPUT = ["x"]  # a single-input model, as most are

names = st.sampled_from(["X", "y", "group", "x", "X\n", "<b>"]) | st.text(max_size=8)
numeric_dtypes = st.sampled_from(["f4", "f8", "f2", "i1", "i8", "u8", "?", "c8"])
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
arrays = hnp.arrays(
    numeric_dtypes, shapes, elements={"allow_nan": True, "allow_infinity": True}
) | hnp.arrays(st.sampled_from(["U3", "S3"]), shapes)
cells = (
    st.none()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
)
column_names = st.text(st.characters(exclude_categories=("Cs",)), max_size=6) | st.sampled_from(
    ["label", "", "y"]
)


def check(read, surface: str) -> Dataset | None:
    """``read()``: rows with a first axis shared by every array, or a one-line refusal."""
    tried[surface] += 1
    try:
        data = read()
    except PressoError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert 0 < len(message) <= MAX_MESSAGE, message[:300]
        return None
    rows = len(data)
    assert rows > 0
    for a in [*data.inputs.values(), *([] if data.target is None else [data.target])]:
        assert a.ndim >= 1 and len(a) == rows
    for a in data.inputs.values():
        assert a.dtype in (np.float32, np.int64) and (a.dtype != np.float32 or np.isfinite(a).all())
    return data


@FAST
@given(content=st.dictionaries(names, arrays, max_size=4))
def test_generated_npz_files_are_read_or_refused_in_one_line(tmp_path, content):
    path = tmp_path / "data.npz"
    try:
        np.savez(path, **{k: v for k, v in content.items() if k.isidentifier() or k})
    except (ValueError, TypeError, OSError):  # names numpy cannot save
        return
    whole = check(lambda: load_data(path, INPUT), "data: .npz")
    streamed = check(lambda: load_data(path, INPUT, memory_budget=1), "data: .npz, streamed")
    assert (whole is None) == (streamed is None)  # the streamed reader refuses what the other does


class Touch:
    """Unpickled, it creates a file: proof that a data file ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_npz_holding_pickled_objects_is_refused_without_unpickling(tmp_path):
    path, proof = tmp_path / "data.npz", tmp_path / "pwned"
    np.savez(path, X=np.array([Touch(proof), 1.0], dtype=object), y=np.array([0, 1]))
    with np.load(path, allow_pickle=True) as npz:  # the payload works when unpickled
        npz["X"]
    assert proof.exists()
    proof.unlink()
    with pytest.raises(PressoError, match="as .npz"):
        load_data(path, INPUT)
    assert not proof.exists()


@pytest.mark.parametrize(
    "name, write, says",
    [
        ("0-d array", lambda p: np.savez(p / "d.npz", X=np.float32(1.0)), "single value"),
        ("0-d target", lambda p: np.savez(p / "d.npz", X=np.ones((3, 2)), y=np.int64(1)), "single value"),
        ("past float32", lambda p: np.savez(p / "d.npz", X=np.array([[1e300, 0.0]])), "beyond float32"),
        ("csv inf", lambda p: (p / "d.csv").write_text("a,b\n1,inf\n2,3\n"), "infinite values"),
        ("csv past float32", lambda p: (p / "d.csv").write_text("a,b\n1,1e300\n2,3\n"), "beyond float32"),
        ("csv newline in a name", lambda p: (p / "d.csv").write_text('"a\nb",c\nx,1\n'), "non-numeric"),
    ],
)
def test_what_the_fuzzing_found_is_refused_in_one_line(tmp_path, name, write, says):
    write(tmp_path)
    (path,) = tmp_path.glob("d.*")
    with pytest.raises(PressoError, match=says) as exc:
        load_data(path, INPUT)
    assert "\n" not in str(exc.value)


@st.composite
def tables(draw) -> str:
    header = draw(st.lists(column_names, min_size=0, max_size=5))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 2), max_size=6))

    def cell(v) -> str:
        text = "" if v is None else str(v)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text

    lines = [",".join(cell(h) for h in header)] + [",".join(cell(v) for v in row) for row in rows]
    return "\n".join(lines) if draw(st.booleans()) else "\n".join(lines[1:])


@FAST
@given(text=tables(), target=st.none() | column_names)
def test_generated_csv_files_are_read_or_refused_in_one_line(tmp_path, text, target):
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    whole = check(lambda: load_data(path, INPUT, target=target), "data: .csv")
    streamed = check(lambda: load_data(path, INPUT, target=target, memory_budget=1), "data: .csv, streamed")
    assert (whole is None) == (streamed is None)


@FAST
@given(raw=st.binary(max_size=400))
def test_any_bytes_as_a_data_file_are_read_or_refused_in_one_line(tmp_path, raw):
    for suffix in (".npz", ".csv", ".parquet", ".txt"):
        path = tmp_path / f"data{suffix}"
        path.write_bytes(raw)
        check(lambda path=path: load_data(path, INPUT), "data: raw bytes")


@FAST
@given(content=st.dictionaries(names, arrays, min_size=1, max_size=3))
def test_the_cli_refuses_bad_data_with_exit_2_one_line_and_nothing_written(
    tmp_path, capsys, mlp_project, content
):
    path = tmp_path / "data.npz"
    try:
        np.savez(path, **content)
    except (ValueError, TypeError, OSError):
        return
    try:
        load_data(path, INPUT)
        return  # data presso reads would be compressed: other tests do that
    except PressoError:
        pass
    tried["data: through the CLI"] += 1
    out = tmp_path / "out"
    argv = ["compress", mlp_project["factory"], "--data", str(path), "--recipe", "int8", "--out", str(out)]
    refused_by_the_cli(argv, out, capsys)


LONG = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.slow
@LONG
@given(content=st.dictionaries(names, arrays, max_size=4), text=tables(), target=st.none() | column_names)
def test_long_profile_generated_data_files(tmp_path, content, text, target):
    npz, csv = tmp_path / "data.npz", tmp_path / "data.csv"
    try:
        np.savez(npz, **content)
    except (ValueError, TypeError, OSError):
        pass
    else:
        check(lambda: load_data(npz, INPUT), "data: long profile, .npz")
    csv.write_text(text, encoding="utf-8")
    check(lambda: load_data(csv, INPUT, target=target), "data: long profile, .csv")
