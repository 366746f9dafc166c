"""The pipeline runner keeps a checkpoint after each stage: a run killed mid-way resumes
from its last finished stage (``--resume``) and gives the result of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from presso.cli.main import main

RECIPE = """\
name: two-stage
stages:
  - technique: slim
    options: {ratio: 0.25, epochs: 3, backoff: 0}
  - technique: int8
    options: {variants: [static-s8s8]}
"""


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "presso",
        "compress",
        "--example",
        "digits",
        "--rounds",
        "2",
        "--batch",
        "8",
        "--quiet",
        *args,
    ]


def _finished_stages(ckpt: Path) -> int:
    try:
        return len(json.loads((ckpt / "state.json").read_text())["stages"])
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed (SIGKILL: no cleanup at all) right after its first stage finished."""
    tmp = tmp_path_factory.mktemp("resume")
    recipe = tmp / "two.yaml"
    recipe.write_text(RECIPE)
    out = tmp / "out"
    temp = tmp / "tmp"  # SIGKILL leaves the run's work folder: here, not in the system's
    temp.mkdir()
    proc = subprocess.Popen(
        _cli("--recipe", str(recipe), "--out", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    ckpt = tmp / "out.checkpoint"
    deadline = time.monotonic() + 300
    while _finished_stages(ckpt) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.communicate()[1].decode()[-500:]}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return recipe, out, ckpt


def test_killed_run_leaves_a_checkpoint_and_no_artifact(killed_run):
    _, out, ckpt = killed_run
    assert not out.exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert [s["technique"] for s in state["stages"]] == ["slim"]
    assert (ckpt / "stage1.onnx").is_file() and (ckpt / "stage1.pt").is_file()


def test_rerun_without_resume_is_refused(killed_run, capsys):
    recipe, out, ckpt = killed_run
    code = main(["compress", "--example", "digits", "--recipe", str(recipe), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--resume" in err and str(ckpt) in err
    assert _finished_stages(ckpt) == 1  # the refusal leaves the checkpoint alone


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_stage_file_replaced_since_the_run_wrote_it_is_not_unpickled(killed_run, tmp_path, capsys):
    import shutil

    import torch

    recipe, _, ckpt = killed_run
    out = tmp_path / "out"
    copy = tmp_path / "out.checkpoint"  # the checkpoint a run on --out tmp_path/out resumes
    shutil.copytree(ckpt, copy)
    marker = tmp_path / "unpickled"
    torch.save(_Payload(marker), copy / "stage1.pt")
    code = main(
        ["compress", "--example", "digits", "--recipe", str(recipe), "--out", str(out), "--resume", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "is not the one this run wrote" in err, err[-500:]
    assert not marker.exists() and not out.exists()


@pytest.mark.e2e
@pytest.mark.int8_kernel
def test_resume_continues_after_the_last_finished_stage(killed_run):
    recipe, out, ckpt = killed_run
    proc = subprocess.run(
        _cli("--recipe", str(recipe), "--out", str(out), "--resume", "--json"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    report = json.loads(proc.stdout)
    assert [(s["technique"], s["resumed"]) for s in report["stages"]] == [("slim", True), ("int8", False)]
    assert not ckpt.exists()  # a finished run removes its checkpoint
    assert (out / "model.onnx").is_file()

    # The same recipe uninterrupted, in this process: the same figures (training is seeded).
    import presso

    ex = presso.load_example("digits")
    whole = presso.compress(
        ex.model,
        recipe,
        data=ex.data,
        task=ex.task,
        bench=presso.measure.bench.BenchSettings(rounds=2, throughput_batch=8),
    )
    assert whole.report.compressed.metrics == pytest.approx(report["compressed"]["metrics"], abs=1e-12)
    assert whole.report.compressed.parameters == report["compressed"]["parameters"]
    assert [s.name for s in whole.report.steps] == [s["name"] for s in report["steps"]]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    import presso
    from presso.errors import PressoError

    ex = presso.load_example("tabular")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"format": 2, "fingerprint": "another run", "stages": []}))
    with pytest.raises(PressoError, match="different run"):
        presso.compress(ex.model, "int8", data=ex.data, task=ex.task, checkpoint=ckpt, resume=True)
    assert (ckpt / "state.json").is_file()


def test_a_run_that_ends_with_an_answer_leaves_no_checkpoint(tmp_path):
    """Only an interruption leaves a checkpoint: a budget failure is an answer, not a pause."""
    import presso
    from presso.errors import BudgetError

    ex = presso.load_example("digits")
    recipe = tmp_path / "impossible.yaml"  # 95% of the channels, one epoch, no drop allowed
    recipe.write_text(
        "name: impossible\nstages:\n  - technique: slim\n    options: {ratio: 0.95, epochs: 1, backoff: 0}\n"
    )
    ckpt = tmp_path / "ckpt"
    with pytest.raises(BudgetError):
        presso.compress(ex.model, recipe, data=ex.data, task=ex.task, max_drop=0.0, checkpoint=ckpt)
    assert not ckpt.exists()
