"""Runs at once: two writing one ``--out`` (one artifact, whole; the other run refused in
one line), ``presso.load`` while a folder is being replaced (the old artifact or the new
one, never a mix of their files), two processes filling one example cache (both get the
same weights, the cache stays loadable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FAST_BENCH
from fuzz_cases import tried
from onnx import TensorProto, helper

import presso
from presso.files import OutputBusy, output_lock


def _scaled_artifact(folder: Path, factor: float, task: str) -> None:
    """A minimal artifact whose model multiplies its input by ``factor`` and whose report
    names ``task``: a load that mixed two of them would pair one's model with the other's."""
    node = helper.make_node("Mul", ["x", "k"], ["y"])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])
    graph = helper.make_graph(
        [node],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "report.json").write_text(json.dumps({"task": task, "padding": "x" * 200_000}))


# A writer in its own process replaces the artifact with A and B in turn, as `presso
# compress` does (a whole new folder beside it, then swapped in), 50 times a second.
_WRITER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    from presso.files import replace_folder
    out, a, b, seconds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        new = out.with_name(f".{out.name}.tmp-{n}")
        shutil.copytree(a if n % 2 else b, new)
        replace_folder(new, out)
        n += 1
        time.sleep(0.02)
    print(n)
""")


def test_load_while_the_artifact_is_replaced_sees_the_old_or_the_new_never_a_mix(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "art"
    _scaled_artifact(a, 1.0, "regression")
    _scaled_artifact(b, 2.0, "classification")
    _scaled_artifact(out, 1.0, "regression")
    expected = {"regression": 1.0, "classification": 2.0}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out), str(a), str(b), "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, int] = {"regression": 0, "classification": 0}
    x = np.ones((1, 4), np.float32)
    while writer.poll() is None:
        predictor = presso.load(out, threads=1)
        assert predictor.model_path == out / "model.onnx"
        assert predictor.task in expected
        assert float(predictor.predict(x)[0, 0]) == expected[predictor.task]  # model and report agree
        seen[predictor.task] += 1
        tried["concurrent loads"] += 1
    swaps = int(writer.communicate()[0])
    assert writer.returncode == 0
    assert swaps > 50 and min(seen.values()) > 5, (swaps, seen)  # it did race both versions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "art", "b"]  # no folder left aside


def test_a_second_holder_of_the_output_lock_is_refused_and_a_killed_holder_leaves_none(tmp_path):
    out = tmp_path / "art"
    with output_lock(out):
        with pytest.raises(OutputBusy, match=rf"process {os.getpid()}\) is writing '{out}'"):
            with output_lock(out):
                pass
    assert list(tmp_path.iterdir()) == []  # released: the lock file is gone
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from presso.files import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with pytest.raises(OutputBusy, match=rf"process {holder.pid}\)"):
        with output_lock(out):
            pass
    holder.kill()  # SIGKILL: no cleanup ran, the kernel drops the lock
    holder.wait()
    with output_lock(out):  # the stale file is taken over, not a reason to refuse
        assert (tmp_path / ".art.lock").read_text() == str(os.getpid())
    tried["output locks"] += 3


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_two_runs_writing_one_out_leave_one_whole_artifact_and_one_clear_refusal(tmp_path):
    out = tmp_path / "art"
    command = [sys.executable, "-m", "presso.cli.main", "compress", "--example", "digits", "--recipe", "int8"]
    runs = [
        subprocess.Popen([*command, "--out", str(out), *FAST_BENCH], stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    done = [(run.wait(timeout=600), run.communicate()[1]) for run in runs]
    codes = sorted(code for code, _ in done)
    assert codes == [0, 2], [err[-1500:] for _, err in done]
    refusal = next(err for code, err in done if code == 2)
    assert refusal.splitlines()[-1].startswith("presso: error: Another presso run (process ")
    assert "Traceback" not in refusal
    assert presso.load(out).predict(np.zeros((1, 1, 8, 8), np.float32)).shape == (1, 10)
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["name"] == "int8" and report["budget"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no lock, no temporary folder
    tried["concurrent runs"] += 2


_BUILD = textwrap.dedent("""
    import hashlib, sys
    from presso.examples import load_example
    example = load_example("digits")
    weights = b"".join(v.numpy().tobytes() for v in example.model.state_dict().values())
    print(hashlib.sha256(weights).hexdigest())
""")


def test_two_processes_filling_one_example_cache_get_the_same_weights(tmp_path):
    env = {**os.environ, "PRESSO_CACHE_DIR": str(tmp_path)}
    builds = [
        subprocess.Popen([sys.executable, "-c", _BUILD], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    digests = {b.communicate(timeout=600)[0].strip() for b in builds}
    assert all(b.returncode == 0 for b in builds) and len(digests) == 1, digests
    files = sorted(p.name for p in (tmp_path / "examples").iterdir())
    assert len(files) == 1 and files[0].endswith(".pt"), files  # no temporary file left
    again = subprocess.run([sys.executable, "-c", _BUILD], capture_output=True, text=True, env=env)
    assert again.stdout.strip() in digests  # the cache both wrote loads, to the same weights
    tried["concurrent example builds"] += 2
