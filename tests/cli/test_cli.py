"""The CLI around compress: help, recipes, bench, eval, re-running a saved recipe."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from conftest import FAST_BENCH, read_report, run_cli


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "art"
    done = run_cli("compress", "--example", "digits", "--out", str(out), *FAST_BENCH)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_the_report_records_where_it_came_from(digits_artifact):
    from importlib.metadata import version

    report = json.loads((digits_artifact / "report.json").read_text())
    command = ["-m", "presso.cli.main", "compress", "--example", "digits", "--out", str(digits_artifact)]
    assert report["command"].endswith(shlex.join(command + FAST_BENCH))
    machine = report["machine"]
    for package in ("torch", "onnxruntime", "onnx"):
        assert machine[package] == version(package)
    assert report["presso_version"] == version("presso")
    assert machine["cpu"] and machine["threads"] >= 1 and isinstance(machine["avx2"], bool)


def test_the_recorded_command_line_hides_passwords_in_urls(monkeypatch):
    from presso.report.build import command_line

    url = "postgresql://presso:s3cret@db:5432/studies"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/presso", "search", "--storage", url, "--storage=" + url])
    hidden = "postgresql://presso:***@db:5432/studies"
    assert command_line() == shlex.join(["presso", "search", "--storage", hidden, "--storage=" + hidden])
    assert "s3cret" not in command_line()


@pytest.mark.parametrize("command", ["compress", "bench", "eval", "recipes"])
def test_help(command):
    done = run_cli(command, "--help")
    assert done.returncode == 0 and "usage: presso " + command in done.stdout


def test_no_command_prints_help():
    done = run_cli()
    assert done.returncode == 2 and "compress" in done.stdout


@pytest.mark.e2e
def test_recipes_list_and_show():
    done = run_cli("recipes")
    names = [line.split()[0] for line in done.stdout.splitlines()]
    from presso.recipe.schema import builtin_names

    assert done.returncode == 0 and names == [*builtin_names(), "auto"]
    assert {"int4", "int8", "kmeans", "qat"} <= set(names)  # the quantization suite's recipes
    listed = json.loads(run_cli("recipes", "--json").stdout)
    assert "int8" in listed and listed["auto"].startswith("search this model's compression space")
    shown = run_cli("recipes", "show", "int8")
    assert "technique: int8" in shown.stdout
    assert run_cli("recipes", "show", "nope").returncode == 2


def test_import_is_light():
    code = (
        "import sys, presso; heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_bench_artifact_vs_baseline(digits_artifact, tmp_path):
    done = run_cli(
        "bench",
        str(digits_artifact),
        "--vs",
        str(digits_artifact / "model.onnx"),
        "--rounds",
        "2",
        "--batch",
        "8",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["threads"] >= 1 and len(result["models"]) == 2
    for figures in result["models"].values():
        assert figures["latency_ms"]["p50"] > 0 and figures["throughput_batch"] == 8
        assert figures["size_bytes"] == (digits_artifact / "model.onnx").stat().st_size


def test_bench_refuses_non_model(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    done = run_cli("bench", str(tmp_path / "x.txt"))
    assert (
        done.returncode == 2 and "neither an artifact folder, an .onnx file nor a .packed file" in done.stderr
    )


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_bench_packed_file_vs_its_model(digits_artifact, tmp_path):
    """A .packed file is timed as the model it unpacks to, and reported at its stored size."""
    from presso.export.packed import pack

    packed = tmp_path / "model.packed"
    stats = pack(digits_artifact / "model.onnx", packed)
    done = run_cli(
        "bench", str(packed), "--vs", str(digits_artifact), "--rounds", "2", "--batch", "8", "--json"
    )
    assert done.returncode == 0, done.stderr
    models = json.loads(done.stdout)["models"]
    mine, theirs = models[str(packed)], models[str(digits_artifact)]
    assert mine["size_bytes"] == stats.bytes == packed.stat().st_size
    assert theirs["size_bytes"] == (digits_artifact / "model.onnx").stat().st_size
    assert mine["parameters"] == theirs["parameters"] and mine["latency_ms"]["p50"] > 0
    missing = run_cli("bench", str(tmp_path / "nope.packed"))
    assert missing.returncode == 2 and "nope.packed" in missing.stderr


@pytest.mark.int8_kernel
def test_eval_on_npz(digits_artifact, tmp_path):
    import numpy as np

    import presso

    ex = presso.load_example("digits")
    np.savez(tmp_path / "d.npz", X=ex.data.inputs["x"], y=ex.data.target)
    done = run_cli("eval", str(digits_artifact), "--data", str(tmp_path / "d.npz"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["task"] == "classification" and result["rows"] == len(ex.data)
    assert result["metrics"]["accuracy"] >= 0.95


@pytest.mark.int8_kernel
def test_eval_samples_data_past_its_memory_budget(digits_artifact, tmp_path):
    import numpy as np

    import presso

    ex = presso.load_example("digits")
    x = ex.data.inputs["x"].astype(np.float32)
    np.savez(tmp_path / "d.npz", X=x, y=ex.data.target)
    budget = x.nbytes // 2  # the sample may take an eighth of it: about 1/16 of the rows
    done = run_cli(
        "eval",
        str(digits_artifact),
        "--data",
        str(tmp_path / "d.npz"),
        "--data-memory",
        str(budget),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sample"]["rows_in_file"] == len(x)
    assert 0 < result["rows"] <= len(x) // 16 + 1
    assert "evaluating a seeded uniform sample" in done.stderr
    assert result["metrics"]["accuracy"] >= 0.85


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_rerun_saved_recipe_reproduces_choice(digits_artifact, tmp_path):
    first = read_report(digits_artifact)
    out = tmp_path / "again"
    done = run_cli(
        "compress",
        "--example",
        "digits",
        "--recipe",
        str(digits_artifact / "recipe.yaml"),
        "--out",
        str(out),
        *FAST_BENCH,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    again = read_report(out)
    # The saved recipe pins the variant, the task, the budget and the split.
    assert [s["chosen"] for s in again["stages"]] == [s["chosen"] for s in first["stages"]]
    assert again["recipe"]["settings"] == first["recipe"]["settings"]
    assert again["data"]["split"]["evaluation_rows"] == first["data"]["split"]["evaluation_rows"]


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_rerun_into_same_folder_replaces_artifact(tmp_path):
    out = tmp_path / "art"
    for _ in range(2):
        done = run_cli("compress", "--example", "tabular", "--out", str(out), *FAST_BENCH)
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.int8_kernel
def test_quantized_model_is_not_quantized_again(digits_artifact, tmp_path):
    import numpy as np

    import presso

    ex = presso.load_example("digits")
    np.savez(tmp_path / "d.npz", X=ex.data.inputs["x"], y=ex.data.target)
    done = run_cli(
        "compress",
        str(digits_artifact / "model.onnx"),
        "--data",
        str(tmp_path / "d.npz"),
        "--out",
        str(tmp_path / "o"),
        *FAST_BENCH,
    )
    assert done.returncode == 2 and "already quantized" in done.stderr
