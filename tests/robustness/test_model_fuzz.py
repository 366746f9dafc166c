"""Damaged model files: a truncated, bit-flipped, zeroed or padded ``.onnx`` is loaded and
run, or refused in one line, by ``presso.load`` and by the loader behind ``presso compress``
(``load_model``); never a traceback, and never a crash of the interpreter.

The damaged files are made with a seeded generator (the same files every run) and loaded in
one child process, which reports each outcome as a JSON line: if ONNX Runtime or onnx
crashed on one, the child dies and the test names the file it was on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from fuzz_cases import tried
from onnx import TensorProto, helper, numpy_helper

FAST_CASES, LONG_CASES = 60, 600

CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import presso
    from presso.errors import PressoError
    from presso.model.sources import load_model

    for path in sorted(Path(sys.argv[1]).glob("*.onnx")):
        for how, load in (("presso.load", presso.load), ("load_model", load_model)):
            print(json.dumps({"file": path.name, "how": how, "started": True}), flush=True)
            try:
                got = load(path)
                if how == "presso.load":
                    got.predict(np.zeros((2, 8), np.float32))
                outcome, message = "ok", ""
            except PressoError as exc:
                outcome, message = "refused", str(exc)
            except Exception as exc:
                outcome, message = "error", f"{type(exc).__name__}: {exc}"[:500]
            print(json.dumps({"file": path.name, "how": how, "outcome": outcome, "message": message}), flush=True)
    """
)


def small_model() -> bytes:
    """An 8 -> 4 MLP layer with a ReLU: weights large enough that damage lands in them too."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def damaged(good: bytes, n: int, seed: int) -> dict[str, bytes]:
    """``n`` damaged copies of ``good``: truncated, bytes flipped, runs zeroed or set to 0xFF,
    garbage appended, emptied."""
    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {"empty.onnx": b""}
    for i in range(n):
        data = bytearray(good)
        kind = ["truncated", "flipped", "zeroed", "ones", "appended"][i % 5]
        if kind == "truncated":
            data = data[: int(rng.integers(1, len(data)))]
        elif kind == "flipped":
            for at in rng.integers(0, len(data), int(rng.integers(1, 9))):
                data[at] ^= int(rng.integers(1, 256))
        elif kind in ("zeroed", "ones"):
            at = int(rng.integers(0, len(data)))
            span = int(rng.integers(1, 33))
            data[at : at + span] = bytes([0 if kind == "zeroed" else 255]) * len(data[at : at + span])
        else:
            data += rng.integers(0, 256, int(rng.integers(1, 64))).astype(np.uint8).tobytes()
        out[f"{i:04d}-{kind}.onnx"] = bytes(data)
    return out


def load_all(folder: Path) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=900
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    last = lines[-1] if lines else {}
    assert done.returncode == 0, (
        f"the loader crashed on {last.get('file')} ({last.get('how')}): {done.stderr[-1500:]}"
    )
    return [line for line in lines if "outcome" in line]


def check_damaged_models(tmp_path: Path, cases: int, seed: int, surface: str) -> dict[str, int]:
    for name, data in damaged(small_model(), cases, seed).items():
        (tmp_path / name).write_bytes(data)
    results = load_all(tmp_path)
    assert len(results) == 2 * (cases + 1)
    tried[surface] += cases + 1
    errors = [r for r in results if r["outcome"] == "error"]
    assert not errors, errors[:5]
    for r in results:
        if r["outcome"] == "refused":
            assert "\n" not in r["message"] and 0 < len(r["message"]) <= 2000, r
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("ok", "refused")}
    assert counts["refused"] > 0  # damage that breaks the file is found, not run
    return counts


def test_damaged_onnx_files_are_run_or_refused_in_one_line_never_crash(tmp_path):
    check_damaged_models(tmp_path, FAST_CASES, seed=0, surface="models: damaged .onnx")


@pytest.mark.slow
def test_long_profile_damaged_onnx_files(tmp_path):
    check_damaged_models(tmp_path, LONG_CASES, seed=1, surface="models: long profile, damaged .onnx")


class Touch:
    """Unpickled, it creates a file: proof that a weights file ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_weights_file_holding_pickled_code_is_refused_without_running_it(tmp_path, mlp_project):
    import torch

    from presso.errors import PressoError
    from presso.model.sources import load_factory

    path, proof = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"layer.weight": Touch(proof)}, path)
    torch.load(path, weights_only=False)  # the payload works when unpickled...
    assert proof.exists()
    proof.unlink()
    with pytest.raises(PressoError, match="Cannot read weights") as exc:
        load_factory(mlp_project["factory"], path)
    assert not proof.exists() and "\n" not in str(exc.value)  # ...and presso never unpickles it


def test_a_safetensors_header_lying_about_sizes_is_refused_in_one_line(tmp_path, mlp_project):
    import struct

    from presso.errors import PressoError
    from presso.model.sources import load_factory

    header = json.dumps(
        {"layer.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    )
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 16)  # 16 bytes, not 4 MB
    with pytest.raises(PressoError, match="Cannot read weights") as exc:
        load_factory(mlp_project["factory"], path)
    assert "\n" not in str(exc.value)


def _external_data_missing(folder: Path) -> Path:
    model = onnx.load_from_string(small_model())
    path = folder / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (folder / "weights.bin").unlink()
    return path


def _opset(version: int) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = onnx.load_from_string(small_model())
        model.opset_import[0].version = version
        path = folder / "model.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    return make


def _integer_output(folder: Path) -> Path:
    """A classifier exported with its argmax: the output is int64 class ids, not scores."""
    model = onnx.load_from_string(small_model())
    model.graph.node.append(helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def _no_outputs(folder: Path) -> Path:
    model = onnx.load_from_string(small_model())
    del model.graph.output[:]
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


MALFORMED: dict[str, Callable[[Path], Path]] = {
    "external data file missing": _external_data_missing,
    "opset newer than ONNX Runtime knows": _opset(99),
    "opset 0": _opset(0),
    "integer output (argmax)": _integer_output,
    "no outputs": _no_outputs,
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_onnx_model_is_refused_in_one_line_or_compressed(case, tmp_path, capsys):
    """Each is refused in one line before any work, or (a model that is valid after all)
    compressed whole: never a traceback, never a partial artifact."""
    from presso.cli.main import main

    model = MALFORMED[case](tmp_path)
    data = tmp_path / "rows.npz"
    np.savez(data, X=np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    out = tmp_path / "out"
    argv = ["compress", str(model), "--data", str(data), "--out", str(out), "--rounds", "2", "--quiet"]
    code = main(argv)
    err = capsys.readouterr().err
    tried["models: malformed .onnx through `presso compress`"] += 1
    assert "Traceback" not in err
    if code == 0:
        assert (out / "model.onnx").is_file() and (out / "report.json").is_file()
        return
    assert code == 2 and err.count("\n") == 1 and err.startswith("presso: error: "), err[-800:]
    assert not out.exists()


def test_a_model_with_integer_outputs_still_loads_and_runs_outside_compress(tmp_path):
    """Refused for compression (nothing to compare), but presso.load runs it: serving or timing
    a classifier that outputs class ids is a fair use."""
    import onnxruntime as ort

    import presso

    model, rows = _integer_output(tmp_path), np.eye(8, dtype=np.float32)
    labels = presso.load(model).predict(rows)
    direct = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": rows})[0]
    assert direct.dtype == np.int64 and np.array_equal(labels, direct)
