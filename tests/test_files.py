"""presso.files: a write either replaces the file whole or leaves the old one and no temporary file."""

from __future__ import annotations

import pytest

from presso.files import atomic_path, write_bytes_atomic, write_text_atomic


def test_success_replaces_the_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # the final name changes only at the end
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_success_creates_a_missing_file(tmp_path):
    path = tmp_path / "report.json"
    with atomic_path(str(path)) as tmp:
        tmp.write_text("{}")
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_exception_inside_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(type(error)):
        with atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise error
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_exception_before_writing_anything_propagates(tmp_path):
    path = tmp_path / "absent.bin"
    with pytest.raises(ValueError, match="no data"):
        with atomic_path(path):
            raise ValueError("no data")
    assert list(tmp_path.iterdir()) == []


def test_write_helpers(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "b.txt", "naïve")
    write_text_atomic(tmp_path / "b.txt", "naïve again")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "naïve again".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_a_new_file_gets_the_usual_permissions(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    write_bytes_atomic(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
