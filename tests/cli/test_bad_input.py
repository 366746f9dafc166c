"""Bad input: one-line error naming the problem and the fix, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_BENCH, run_cli


def _assert_refused(done, out, *fragments: str, code: int = 2):
    assert done.returncode == code, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("presso: error: ")
    for fragment in fragments:
        assert fragment in last, last
    assert not out.exists(), "no output folder may be left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers


@pytest.fixture
def out(tmp_path):
    return tmp_path / "artifact"


def test_missing_model_path(tmp_path, out):
    done = run_cli("compress", str(tmp_path / "nope.onnx"), "--data", "x.npz", "--out", str(out))
    _assert_refused(done, out, "not found")


def test_missing_factory_file(tmp_path, out):
    done = run_cli("compress", str(tmp_path / "nope.py") + ":build", "--data", "x.npz", "--out", str(out))
    _assert_refused(done, out, "nope.py", "not found")


def test_factory_without_function(mlp_project, out):
    done = run_cli(
        "compress",
        str(mlp_project["dir"] / "mlp.py") + ":missing",
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
    )
    _assert_refused(done, out, "no function 'missing'")


def test_unreadable_weights(mlp_project, out):
    bad = mlp_project["dir"] / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--weights",
        str(bad),
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
    )
    _assert_refused(done, out, "Cannot read weights")


def test_weights_that_do_not_fit(mlp_project, out, tmp_path):
    import torch

    torch.save({"net.0.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--weights",
        str(tmp_path / "other.pt"),
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
    )
    _assert_refused(done, out, "do not fit the model")


def test_corrupt_onnx(tmp_path, out):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-a-protobuf" * 10)
    done = run_cli("compress", str(bad), "--data", "x.npz", "--out", str(out))
    _assert_refused(done, out, "not a valid ONNX model")


def test_onnx_that_onnx_runtime_refuses_is_named_as_the_models_fault(tmp_path, out):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # onnx's checker accepts a float64 weight beside a float32 input; ONNX Runtime does not.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float64), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "mixed.onnx")
    np.savez(tmp_path / "rows.npz", X=np.zeros((50, 4), np.float32))
    done = run_cli(
        "compress", str(tmp_path / "mixed.onnx"), "--data", str(tmp_path / "rows.npz"), "--out", str(out)
    )
    _assert_refused(done, out, "ONNX Runtime cannot load 'mixed.onnx'", "Re-export")
    assert "does not fit" not in done.stderr
    # presso.load / Predictor say the same of the same file (one wrap, in make_session)
    from presso.errors import PressoError
    from presso.export.predictor import Predictor

    with pytest.raises(PressoError, match="ONNX Runtime cannot load 'mixed.onnx': .*Re-export"):
        Predictor(tmp_path / "mixed.onnx")


def test_data_shape_does_not_fit(mlp_project, tmp_path, out):
    np.savez(tmp_path / "wrong.npz", X=np.zeros((50, 7), np.float32), y=np.zeros(50, np.int64))
    done = run_cli(
        "compress", mlp_project["factory"], "--data", str(tmp_path / "wrong.npz"), "--out", str(out)
    )
    _assert_refused(done, out, "does not fit the model", "[7]")


def test_npz_without_X(mlp_project, tmp_path, out):
    np.savez(tmp_path / "named.npz", inputs=np.zeros((50, 12), np.float32))
    done = run_cli(
        "compress", mlp_project["factory"], "--data", str(tmp_path / "named.npz"), "--out", str(out)
    )
    _assert_refused(done, out, "array 'X'")


def test_unknown_recipe(mlp_project, out):
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--recipe",
        "int7",
        "--out",
        str(out),
    )
    _assert_refused(done, out, "Unknown recipe 'int7'", "int8")


def test_recipe_with_bad_option(mlp_project, tmp_path, out):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mine\nstages:\n  - technique: int8\n    options: {calibration: median}\n")
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
    )
    _assert_refused(done, out, "stage 1 'int8'", "calibration")


def test_missing_target_column(mlp_project, tmp_path, out):
    frame = pd.DataFrame(mlp_project["x"], columns=[f"f{i}" for i in range(12)])
    frame["label"] = mlp_project["y"]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(tmp_path / "rows.csv"),
        "--target",
        "class",
        "--out",
        str(out),
    )
    _assert_refused(done, out, "Column 'class' not found", "label")


def test_nans_in_npz(mlp_project, tmp_path, out):
    x = mlp_project["x"].copy()
    x[5, 2] = np.nan
    np.savez(tmp_path / "nan.npz", X=x, y=mlp_project["y"])
    done = run_cli("compress", mlp_project["factory"], "--data", str(tmp_path / "nan.npz"), "--out", str(out))
    _assert_refused(done, out, "NaN", "row 5")


def test_nans_in_csv(mlp_project, tmp_path, out):
    frame = pd.DataFrame(mlp_project["x"], columns=[f"f{i}" for i in range(12)])
    frame.loc[3, "f4"] = np.nan
    frame["label"] = mlp_project["y"]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(tmp_path / "rows.csv"),
        "--target",
        "label",
        "--out",
        str(out),
    )
    _assert_refused(done, out, "missing values", "f4")


def test_unsupported_data_file(mlp_project, tmp_path, out):
    (tmp_path / "rows.json").write_text("{}")
    done = run_cli(
        "compress", mlp_project["factory"], "--data", str(tmp_path / "rows.json"), "--out", str(out)
    )
    _assert_refused(done, out, "Unsupported data file", ".npz")


def test_labels_out_of_range(mlp_project, tmp_path, out):
    np.savez(tmp_path / "labels.npz", X=mlp_project["x"], y=mlp_project["y"] + 5)
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(tmp_path / "labels.npz"),
        "--task",
        "classification",
        "--out",
        str(out),
    )
    _assert_refused(done, out, "classes")


def test_unknown_example(out):
    done = run_cli("compress", "--example", "mnist", "--out", str(out))
    _assert_refused(done, out, "Unknown example 'mnist'", "digits")


def test_text_data_for_a_non_text_model(mlp_project, tmp_path, out):
    (tmp_path / "t.txt").write_text("hello world\n")
    done = run_cli("compress", mlp_project["factory"], "--data", str(tmp_path / "t.txt"), "--out", str(out))
    _assert_refused(done, out, "text model")


def test_existing_non_artifact_output_is_refused(mlp_project, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = run_cli(
        "compress",
        mlp_project["factory"],
        "--data",
        str(mlp_project["dir"] / "data.npz"),
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 2 and "not a presso artifact" in done.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_debug_shows_traceback(tmp_path, out):
    done = run_cli("compress", str(tmp_path / "nope.onnx"), "--data", "x.npz", "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr


def _caught_as_value_error(call):
    try:
        call()
    except ValueError as exc:
        return exc
    pytest.fail("no ValueError was raised")


def test_bad_option_is_caught_as_value_error(mlp_project, tmp_path):
    """User code guarding a call with ``except ValueError`` catches presso's bad-option error,
    the same PressoError with the same message (the line the CLI prints)."""
    import presso
    from presso.train.loop import FitSettings

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mine\nstages:\n  - technique: int8\n    options: {calibration: median}\n")
    data = str(mlp_project["dir"] / "data.npz")
    with pytest.raises(presso.PressoError) as refused:
        presso.compress(mlp_project["model"], recipe, data=data)
    caught = _caught_as_value_error(lambda: presso.compress(mlp_project["model"], recipe, data=data))
    assert isinstance(caught, presso.PressoError) and caught.exit_code == 2
    assert str(caught) == str(refused.value)
    assert "stage 1 'int8'" in str(caught) and "calibration" in str(caught)

    caught = _caught_as_value_error(lambda: FitSettings(epochs=-1))
    assert isinstance(caught, presso.PressoError)
    assert (
        str(caught) == "The 'epochs' option of the fine-tuning settings must be an int >= 0. Got -1 instead."
    )
