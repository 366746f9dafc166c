"""scripts/support_matrix.py: one row per zoo entry, written between README's markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from zoo.models import ZOO

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "scripts" / "support_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.int8_kernel
def test_generator_writes_one_row_per_entry_between_the_markers(tmp_path):
    matrix = _script()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{matrix.START}\nold table\n{matrix.END}\n\nafter\n")
    matrix.main(["--only", "two-tower,control-flow", "--techniques", "int8", "--readme", str(readme)])
    page = readme.read_text()
    assert "old table" not in page and page.endswith(f"{matrix.END}\n\nafter\n")
    section = page.split(matrix.START)[1].split(matrix.END)[0].strip().splitlines()
    assert section[0] == "| model | architecture | int8 |" and len(section) == 2 + 2
    two_tower, control = section[2:]
    assert two_tower.startswith("| `two-tower` |") and "| works (drop 0.0" in two_tower
    assert "x smaller) |" in two_tower and "expected" not in two_tower
    assert control.startswith("| `control-flow` |")
    assert "| refused: ONNX export: ONNX outputs differ from PyTorch" in control


def test_readme_matrix_has_one_row_per_zoo_entry():
    matrix = _script()
    page = (ROOT / "README.md").read_text()
    section = page.split(matrix.START)[1].split(matrix.END)[0].strip().splitlines()
    names = [line.split("|")[1].strip().strip("`") for line in section[2:]]
    assert names == list(ZOO)  # regenerate: python scripts/support_matrix.py
