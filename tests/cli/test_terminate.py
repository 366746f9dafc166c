"""A run ended by SIGTERM or Ctrl-C cleans up after itself: exit 143 / 130, no artifact, and
nothing left in the temporary folder (its work folder and ONNX Runtime's files included)."""

from __future__ import annotations

import getpass
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from presso.recipe.run import new_workdir, temporary_files_in

PERSISTENT = {".ses", f"torchinductor_{getpass.getuser()}"}


def _start(tmp_path: Path, temp: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "presso", "compress", "--example", "digits", "--recipe", "int8"]
    return subprocess.Popen(
        [*cmd, "--out", str(out), "--quiet", "--rounds", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell that starts the tests in the background (nohup, CI) ignores SIGINT and its
        # children inherit that; a user's terminal does not: give the run the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_stage(proc: subprocess.Popen, temp: Path, timeout: float = 300) -> None:
    """Until the run is inside its int8 stage (its stage folder exists in the work folder)."""
    deadline = time.monotonic() + timeout
    while not any(temp.glob("presso-work-*/stage1-int8")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its stage started: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run did not reach its int8 stage")
        time.sleep(0.02)


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_stage_removes_everything_and_exits_with_its_code(tmp_path, sig, code):
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "art"
    proc = _start(tmp_path, temp, out)
    _wait_for_stage(proc, temp)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "nothing was written" in err
    assert not out.exists()
    # No presso-work-*, no ort.quant.*: only what a completed run leaves there too (ONNX
    # Runtime's 51-byte session id file and torch's per-user compile cache folder).
    assert {p.name for p in temp.iterdir()} <= PERSISTENT


@pytest.mark.e2e
def test_signals_at_random_moments_leave_an_artifact_whole_or_absent_and_no_temporary_files(tmp_path):
    """SIGTERM or Ctrl-C at seeded random moments across a run (loading, the stage, measuring,
    writing): exit 143 / 130 with nothing written, or a finished run's whole artifact; never
    a partial one, never temporary files left behind."""
    rng = random.Random(21)
    outcomes = []
    for k in range(6):
        sig, code = rng.choice([(signal.SIGTERM, 143), (signal.SIGINT, 130)])
        temp, out = tmp_path / f"tmp{k}", tmp_path / f"art{k}"
        temp.mkdir()
        proc = _start(tmp_path, temp, out)
        # From the moment the run has its work folder (before it, the interpreter is still
        # importing: Python's own handling, not presso's), a random while later
        while not any(temp.glob("presso-work-*")) and proc.poll() is None:
            time.sleep(0.01)
        try:
            proc.wait(timeout=rng.uniform(0.0, 8.0))  # done before the signal came: fine too
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        whole = out.is_dir() and {p.name for p in out.iterdir()} >= {
            "model.onnx",
            "report.json",
            "report.html",
        }
        if proc.returncode in (0, -sig):  # finished; or the signal came as the interpreter exited
            assert whole or (proc.returncode == -sig and not out.exists()), err[-2000:]
        else:
            assert proc.returncode == code and "Traceback" not in err, err[-2000:]
            assert not out.exists()
        assert {p.name for p in temp.iterdir()} <= PERSISTENT, (k, sorted(p.name for p in temp.iterdir()))
        outcomes.append(proc.returncode)
    assert any(c != 0 for c in outcomes)  # the signals did land inside runs


def test_temporary_files_go_into_the_work_folder_and_new_work_folders_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    work = new_workdir()
    assert work.parent == tmp_path
    with temporary_files_in(work):
        # what ONNX Runtime's quantizer does: a folder of its own through tempfile
        with tempfile.TemporaryDirectory(prefix="ort.quant.") as scratch:
            assert Path(scratch).parent == work / "tmp"
        inner = new_workdir()  # e.g. a search's final run, kept after the search's folder goes
        assert inner.parent == tmp_path
        with temporary_files_in(inner):
            assert Path(tempfile.mkdtemp()).parent == inner / "tmp"
        assert tempfile.gettempdir() == str(work / "tmp")
    assert tempfile.tempdir == str(tmp_path)  # restored
